#!/usr/bin/env python3
"""Side-by-side training-step benchmark: selfsup (burn flex) vs the PyTorch reference.

Runs crates/selfsup/benches/train_step.rs and bench/torch_step.py ALTERNATELY, one case per process
(so that each process's peak RSS belongs to one case), for several rounds, swapping which framework
goes first each round. Both use 2 threads. Prints per-step medians over all timed steps of all
rounds, the ratio selfsup/PyTorch (< 1: selfsup faster), the spread of the per-round ratios,
peak RSS, and the FLOP figures (matmul 2048^3 GFLOP/s; the cores' FMA peak, measured by a register-only
FMA loop in the Rust binary; GPT model GFLOP/s as a share of both, and the GPT step's FLOP floor).

    python3 bench/compare.py                      # simclr_a, simclr_b, gpt, matmul, fma; 3 rounds
    python3 bench/compare.py --rounds 5 --steps 10 --cases simclr_b,gpt --json /tmp/cmp.json
    python3 bench/compare.py --cases fmnist_tiny,fmnist_resnet18 --rounds 1
    python3 bench/compare.py --device cuda --rust-bin BIN --python python3 --cases simclr_a,simclr_b,gpt,matmul

With --device cuda (a train_step built with `--features cuda`, see bench/gpu.sh) both run on the
GPU in fp32 and the memory columns are the GPU memory each framework's allocator reserved.

The Rust binary is built with `cargo bench --profile release --no-run` (the release profile
reuses the release-built burn; the default bench profile would rebuild all of burn), with
CARGO_TARGET_DIR from the environment. --rust-bin skips the build.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CASES = ["simclr_a", "simclr_b", "gpt", "matmul", "fma"]
# Machine measurements that only the Rust binary runs (no PyTorch counterpart).
RUST_ONLY = {"fma"}
# Extra PyTorch-only rows: torch case -> the selfsup case it is compared with.
TORCH_ALIASES = {"gpt_math": "gpt"}


def build_rust(cargo_target_dir):
    env = dict(os.environ)
    if cargo_target_dir:
        env["CARGO_TARGET_DIR"] = cargo_target_dir
    cmd = ["cargo", "bench", "--profile", "release", "--no-run", "-p", "selfsup", "--bench", "train_step",
           "--message-format", "json"]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, check=True, text=True).stdout
    exe = None
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "train_step":
            exe = msg.get("executable") or exe
    if not exe:
        sys.exit("compare.py: could not find the train_step executable in cargo's output")
    return exe


CLK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def cpu_busy_s():
    """Seconds of CPU time all processes have used (user+nice+system+irq+softirq+steal), /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK


def busy_share(seconds):
    """Share of all cores busy over the next `seconds` (0..1)."""
    b0, t0 = cpu_busy_s(), time.perf_counter()
    time.sleep(seconds)
    return (cpu_busy_s() - b0) / ((time.perf_counter() - t0) * NCPU)


def wait_idle(threshold, max_wait):
    """Waits until other processes use < threshold of the cores (sampled over 3 s), at most max_wait s."""
    t0 = time.perf_counter()
    while True:
        share = busy_share(3.0)
        if share < threshold or time.perf_counter() - t0 > max_wait:
            return share
        print(f"  (machine busy: {100 * share:.0f}% of cores used by others; waiting)", flush=True)
        time.sleep(10)


def run_one(cmd, env, label):
    """Runs one case process. Returns its RESULT dict with wall time, peak RSS from wait4 and
    `others`: the share of the cores that OTHER processes used meanwhile (noise indicator)."""
    b0, t0 = cpu_busy_s(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        busy = cpu_busy_s() - b0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode != 0:
        sys.exit(f"compare.py: {label} failed ({p.returncode}):\n{stdout}\n{stderr}")
    result = None
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if result is None:
        sys.exit(f"compare.py: no RESULT line from {label}:\n{stdout}\n{stderr}")
    ours = ru.ru_utime + ru.ru_stime
    result["wall_s"] = wall
    result["cpu_s"] = ours
    result["others"] = max(0.0, (busy - ours) / (wall * NCPU))
    result["wait4_maxrss_mib"] = ru.ru_maxrss / 1024.0
    for line in stdout.splitlines():
        if line.strip() and not line.startswith(("RESULT ", "selfsup train_step", "pytorch train_step")):
            print(f"  {label:<8} {line}  [others {100 * result['others']:.0f}%]", flush=True)
    return result


def fmt_ms(v):
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES),
                    help="comma list of simclr_a, simclr_b, gpt, matmul, fmnist_tiny, fmnist_resnet18 "
                         "(default: %(default)s); gpt also runs the PyTorch gpt_math row unless --no-gpt-math")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per process (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", default=os.environ.get("BENCH_PYTHON", "/work/venv-bench/bin/python"),
                    help="python with torch (default: $BENCH_PYTHON or /work/venv-bench/bin/python)")
    ap.add_argument("--rust-bin", help="prebuilt train_step binary (skips cargo)")
    ap.add_argument("--no-gpt-math", action="store_true", help="skip the PyTorch explicit-attention GPT row")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both frameworks)")
    ap.add_argument("--allow-tf32", action="store_true", help="with --device cuda: PyTorch may use TF32")
    ap.add_argument("--matmul-precision", choices=["fp32", "bf16"], default="fp32",
                    help="selfsup's matmul precision (train_step --matmul-precision)")
    ap.add_argument("--torch-precision", choices=["fp32", "bf16", "autocast"], default="fp32",
                    help="PyTorch's: fp32; bf16 = mkldnn fp32_precision 'bf16'; autocast = "
                         "torch.autocast('cpu', bfloat16) (torch_step.py --matmul-precision)")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="SHARE",
                    help="before each process, wait until other processes use less than SHARE (0..1) of the "
                         "cores (shared machines: builds running); see --wait-max")
    ap.add_argument("--wait-max", type=float, default=600, help="longest wait per process, seconds")
    ap.add_argument("--clean", type=float, default=0.15, metavar="SHARE",
                    help="summarize only rounds where other processes used <= SHARE of the cores during both "
                         "runs (default %(default)s; all rounds if none qualifies)")
    a = ap.parse_args()

    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    rust_bin = a.rust_bin or build_rust(os.environ.get("CARGO_TARGET_DIR"))
    threads = str(a.threads)
    rust_env = dict(os.environ, RAYON_NUM_THREADS=threads)
    torch_env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    steps = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--device", a.device]
    gpu = a.device != "cpu"
    if gpu:
        cases = [c for c in cases if c not in RUST_ONLY]  # the FMA loop measures the CPU
    mem_key, mem_name = ("device_mem_mib", "GPU mem") if gpu else ("peak_rss_mib", "RSS")

    # (framework, case) -> list of per-round results
    results = {}
    plan = []
    for c in cases:
        plan.append(("selfsup", c, [rust_bin, "--case", c, "--matmul-precision", a.matmul_precision] + steps,
                     rust_env))
        if c in RUST_ONLY:
            continue
        tprec = ["--matmul-precision", a.torch_precision] + (["--allow-tf32"] if a.allow_tf32 else [])
        plan.append(("pytorch", c, [a.python, str(ROOT / "bench" / "torch_step.py"), "--case", c,
                                    "--threads", threads] + tprec + steps, torch_env))
        if c == "gpt" and not a.no_gpt_math:
            plan.append(("pytorch", "gpt_math", [a.python, str(ROOT / "bench" / "torch_step.py"), "--case",
                                                 "gpt_math", "--threads", threads] + tprec + steps, torch_env))
    started = time.time()
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for c in cases:
            jobs = [j for j in plan if j[1] == c or TORCH_ALIASES.get(j[1]) == c]
            if r % 2 == 1:  # alternate who goes first
                jobs = jobs[::-1]
            for fw, case, cmd, env in jobs:
                if a.wait_idle is not None:
                    wait_idle(a.wait_idle, a.wait_max)
                res = run_one(cmd, env, fw)
                res["round"] = r
                results.setdefault((fw, case), []).append(res)

    def med(runs, key):
        vals = [t for x in runs for t in x[key]]
        return statistics.median(vals) if vals else float("nan")

    def per_step(run, key):
        # flops or images per step, recovered from the run's rate at its median.
        return run[key] * run["median_ms"] / 1e3 if key in run else None

    rows = []
    for c in cases:
        if c in RUST_ONLY:
            continue
        for tcase in [c] + [k for k, v in TORCH_ALIASES.items() if v == c and not a.no_gpt_math]:
            pairs = list(zip(results[("selfsup", c)], results[("pytorch", tcase)]))
            clean = [p for p in pairs if max(p[0]["others"], p[1]["others"]) <= a.clean]
            used = clean or pairs
            s_rs, t_rs = [p[0] for p in used], [p[1] for p in used]
            s_ms, t_ms = med(s_rs, "times_ms"), med(t_rs, "times_ms")
            s_cpu, t_cpu = med(s_rs, "cpu_ms"), med(t_rs, "cpu_ms")
            per_round = [p[0]["median_ms"] / p[1]["median_ms"] for p in used]
            row = {
                "case": c if tcase == c else f"{c} vs torch {tcase}",
                "selfsup_ms": s_ms, "pytorch_ms": t_ms, "ratio": s_ms / t_ms,
                "ratio_min": min(per_round), "ratio_max": max(per_round),
                "selfsup_cpu_ms": s_cpu, "pytorch_cpu_ms": t_cpu, "cpu_ratio": s_cpu / t_cpu,
                "selfsup_rss_mib": max(x["peak_rss_mib"] for x in s_rs),
                "pytorch_rss_mib": max(x["peak_rss_mib"] for x in t_rs),
                "selfsup_mem_mib": max(x.get(mem_key, float("nan")) for x in s_rs),
                "pytorch_mem_mib": max(x.get(mem_key, float("nan")) for x in t_rs),
                "rounds_used": len(used), "rounds_clean": len(clean), "rounds": len(pairs),
                "others_max": max(max(p[0]["others"], p[1]["others"]) for p in used),
                "selfsup_loss0": s_rs[0].get("losses", [None])[0],
                "pytorch_loss0": t_rs[0].get("losses", [None])[0],
            }
            for fw, rs, ms in (("selfsup", s_rs, s_ms), ("pytorch", t_rs, t_ms)):
                f = per_step(rs[0], "gflops")
                row[f"{fw}_gflops"] = f / (ms / 1e3) if f else None
                n = per_step(rs[0], "images_per_s")
                row[f"{fw}_img_s"] = n / (ms / 1e3) if n else None
            rows.append(row)

    print()
    where = f"on {a.device}" if gpu else f"flex, {a.threads} threads"
    print(f"selfsup (burn 0.22.1 {where}) vs PyTorch, median of {a.steps} steps per process after "
          f"{a.warmup} warm-up, pooled over the rounds used; ratio = selfsup/PyTorch (< 1: selfsup faster); "
          f"matmul precision selfsup {a.matmul_precision}, PyTorch {a.torch_precision}")
    hdr = (f"| {'step':<24} | {'selfsup ms':>10} | {'PyTorch ms':>10} | {'ratio':>5} | {'per round':>9} | "
           f"{'CPU-ms ratio':>12} | {'selfsup ' + mem_name:>11} | {'PyTorch ' + mem_name:>11} | {'rounds':>6} | "
           f"{'others':>6} |")
    print(hdr)
    print("|" + "|".join("-" * (len(x)) for x in hdr.split("|")[1:-1]) + "|")
    for row in rows:
        print(f"| {row['case']:<24} | {fmt_ms(row['selfsup_ms']):>10} | {fmt_ms(row['pytorch_ms']):>10} | "
              f"{row['ratio']:>5.2f} | {row['ratio_min']:.2f}-{row['ratio_max']:.2f} | {row['cpu_ratio']:>12.2f} | "
              f"{row['selfsup_mem_mib']:>7.0f} MiB | {row['pytorch_mem_mib']:>7.0f} MiB | "
              f"{row['rounds_used']:>2}/{row['rounds']:<3} | {100 * row['others_max']:>5.0f}% |")
    print(f"rounds: rounds used / run; a round is used when other processes took <= {100 * a.clean:.0f}% of the "
          f"cores during both of its runs (if no round was that quiet, all are used). others: the most that other "
          f"processes took during a used run. CPU-ms ratio: process CPU time per step (all threads), a check "
          f"that is less sensitive to other load than wall time.")
    by = {r["case"]: r for r in rows}
    if "matmul" in by:
        m = by["matmul"]
        print(f"\nmatmul 2048^3: selfsup {m['selfsup_gflops']:.0f} GFLOP/s, PyTorch {m['pytorch_gflops']:.0f} GFLOP/s")
        for k, g in by.items():
            if k.startswith("gpt") and g["selfsup_gflops"]:
                print(f"{k}: model FLOPs (matmuls, fwd+bwd = 3x fwd) selfsup {g['selfsup_gflops']:.1f} GFLOP/s "
                      f"= {100 * g['selfsup_gflops'] / m['selfsup_gflops']:.0f}% of its matmul peak; PyTorch "
                      f"{g['pytorch_gflops']:.1f} GFLOP/s = {100 * g['pytorch_gflops'] / m['pytorch_gflops']:.0f}%")
    fma = results.get(("selfsup", "fma"))
    if fma:
        peak = statistics.median(x["gflops"] for x in fma)
        print(f"\nFMA peak ({a.threads} threads, register-only loop): {peak:.0f} GFLOP/s")
        for k, g in by.items():
            if k == "gpt" and g["selfsup_gflops"]:
                gflop = g["selfsup_gflops"] * g["selfsup_ms"] / 1e3  # model GFLOP per step
                target_ms = 0.8 * g["pytorch_ms"]
                print(f"gpt: selfsup {100 * g['selfsup_gflops'] / peak:.0f}% of the FMA peak, PyTorch "
                      f"{100 * g['pytorch_gflops'] / peak:.0f}%. Its {gflop:.1f} GFLOP of matmuls alone take "
                      f"{gflop / peak * 1e3:.0f} ms at the FMA peak; a ratio of 0.8 ({target_ms:.0f} ms) needs "
                      f"{100 * gflop / (target_ms / 1e3) / peak:.0f}% of the peak for the whole step")
    for k, g in by.items():
        if g["selfsup_img_s"] and k.startswith("fmnist"):
            print(f"{k}: selfsup {g['selfsup_img_s']:.0f} img/s, PyTorch {g['pytorch_img_s']:.0f} img/s "
                  f"(batch 256 images = 512 views, step only)")
    losses = [f"{r['case']} {r['selfsup_loss0']:.4f}/{r['pytorch_loss0']:.4f}" for r in rows
              if r["selfsup_loss0"] is not None]
    if losses:
        print("first-step loss selfsup/PyTorch (sanity; the random inits differ): " + ", ".join(losses))
    print(f"total wall time {time.time() - started:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows,
                                            "raw": {f"{k[0]}/{k[1]}": v for k, v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
