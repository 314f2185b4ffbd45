#!/usr/bin/env python3
"""SimCLR pretraining throughput on Fashion-MNIST through the real trainer (`selfsup pretrain`).

For each encoder, runs
    selfsup pretrain --method simclr --data fashion-mnist --encoder ENC --batch-size 256 --minutes M --out DIR
with RAYON_NUM_THREADS=2 and reads images/s (`samples_per_s`: images, each giving 2 views) and the
data-wait share from DIR/metrics.jsonl. The first logged window (warm-up) is dropped when there are
more. This is end to end: augmentation on worker threads, the step, logging, checkpointing.

    python3 bench/fmnist_throughput.py --bin /work/main/target/release/selfsup --encoders tiny,resnet18

Fashion-MNIST: /work/shared/data/get.sh fashion-mnist (into ~/.cache/selfsup-data/fashion-mnist).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("SELFSUP_BIN", "target/release/selfsup"))
    ap.add_argument("--encoders", default="tiny,resnet18")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training budget per encoder (default: 1 for tiny, 3 for resnet18)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    rows = []
    for enc in a.encoders.split(","):
        minutes = a.minutes if a.minutes is not None else (3.0 if enc.startswith("resnet") else 1.0)
        out = Path(tempfile.mkdtemp(prefix=f"fmnist-{enc}-")) / "run"
        cmd = [a.bin, "pretrain", "--method", "simclr", "--data", a.data, "--encoder", enc,
               "--batch-size", str(a.batch_size), "--minutes", str(minutes), "--out", str(out)]
        print("+ " + " ".join(cmd), flush=True)
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail = r.stdout.strip().splitlines()[-1:] if r.stdout.strip() else []
        if r.returncode != 0:
            sys.exit(f"fmnist_throughput.py: {enc} failed:\n{r.stdout}")
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        # Training windows only: the file also holds the periodic representation checks
        # (kNN accuracy, collapse diagnostics), which carry no throughput.
        lines = [x for x in lines if "samples_per_s" in x]
        if not lines:
            sys.exit(f"fmnist_throughput.py: {enc}: no training window in {out / 'metrics.jsonl'}")
        use = lines[1:] if len(lines) > 1 else lines
        ips = statistics.median(x["samples_per_s"] for x in use)
        wait = statistics.median(x["data_wait_frac"] for x in use)
        steps = lines[-1]["step"]
        rows.append({"encoder": enc, "images_per_s": ips, "data_wait_frac": wait, "steps": steps,
                     "minutes": minutes, "batch": a.batch_size})
        print(f"  {tail[0] if tail else ''}")
        print(f"{enc:<10} {ips:8.1f} images/s  ({2 * ips:.0f} views/s)  data wait {100 * wait:.1f}%  "
              f"{steps} steps of {a.batch_size}", flush=True)
        shutil.rmtree(out.parent, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
