#!/usr/bin/env bash
# A/B of one train_step binary with and without an environment setting (e.g. a kernel or
# allocator switch): runs A (plain) and B (with ENV) alternately, ROUNDS × 6 timed steps each after
# 2 warm-up, and prints each side's median wall and CPU ms per step and its peak RSS.
# Usage: bench/ab_env.sh CASE ROUNDS BIN "ENV=VALUE ..."
#   e.g. bench/ab_env.sh simclr_b 5 target/release/deps/train_step-… SELFSUP_NO_HUGEPAGES=1
set -euo pipefail
case=$1; rounds=$2; bin=$3; envb=$4
for _ in $(seq "$rounds"); do
  RAYON_NUM_THREADS=2 "$bin" --case "$case" --steps 6 --warmup 2 | grep '^RESULT' | sed "s|^RESULT|A|"
  # shellcheck disable=SC2086 # ENV is a list of assignments
  env RAYON_NUM_THREADS=2 $envb "$bin" --case "$case" --steps 6 --warmup 2 | grep '^RESULT' | sed "s|^RESULT|B|"
done | python3 -c '
import json, statistics, sys
runs = {}
for line in sys.stdin:
    name, js = line.split(" ", 1)
    r = json.loads(js)
    w, c, rss = runs.setdefault(name, ([], [], []))
    w += r["times_ms"]
    c += r["cpu_ms"]
    rss.append(r["peak_rss_mib"])
for name, (w, c, rss) in runs.items():
    label = "A (plain)" if name == "A" else "B (" + sys.argv[1] + ")"
    print(f"{label}: wall median {statistics.median(w):.1f} ms, CPU median {statistics.median(c):.1f} ms, "
          f"peak RSS {max(rss):.0f} MiB, {len(w)} steps")
' "$envb"
