#!/usr/bin/env bash
# A/B of two train_step binaries (e.g. before/after a kernel change): runs them alternately,
# ROUNDS × 6 timed steps each after 2 warm-up, and prints each binary's median wall and CPU ms per
# step over all its steps. Alternating spreads the shared machine's slow periods over both.
# Usage: bench/ab.sh CASE ROUNDS BIN_A BIN_B      e.g. bench/ab.sh gpt 5 /tmp/before /tmp/after
set -euo pipefail
case=$1; rounds=$2; a=$3; b=$4
for _ in $(seq "$rounds"); do
  for bin in "$a" "$b"; do
    "$bin" --case "$case" --steps 6 --warmup 2 | grep '^RESULT' | sed "s|^RESULT|$bin|"
  done
done | python3 -c '
import json, statistics, sys
runs = {}
for line in sys.stdin:
    name, js = line.split(" ", 1)
    r = json.loads(js)
    w, c = runs.setdefault(name, ([], []))
    w += r["times_ms"]
    c += r["cpu_ms"]
for name, (w, c) in runs.items():
    print(f"{name}: wall median {statistics.median(w):.1f} ms, CPU median {statistics.median(c):.1f} ms, {len(w)} steps")
'
