#!/usr/bin/env python3
"""PyTorch reference for crates/selfsup/benches/train_step.rs: the same models and steps, fp32 on CPU.

Cases (same names as the Rust bench):
  simclr_a         ConvNet 3->32->64->128->256 (3x3, strides 1/2/2/2, pad 1, ReLU, no BN), global
                   average pool, projector Linear-ReLU-Linear 256->256->128; 2x128 views 3x32x32;
                   NT-Xent tau 0.5; AdamW lr 1e-3.
  simclr_b         BatchNorm after each conv (convs without bias) and a Linear(no bias)-BN-ReLU-Linear
                   projector, as selfsup's SimClr.
  gpt              nanoGPT-style byte GPT: vocab 256, d 256, 4 layers, 4 heads, MLP 1024 (exact GELU),
                   seq 128, batch 16, pre-LN, learned positions, tied head, GPT-2 init.
                   Attention with F.scaled_dot_product_attention(is_causal=True), as nanoGPT does.
  gpt_math         the same GPT with attention written out (q k^T / sqrt(d), masked_fill, softmax, @ v),
                   i.e. the ops selfsup runs.
  matmul           2048x2048 @ 2048x2048 fp32.
  fmnist_tiny      SimCLR with selfsup's tiny ConvNet (1->32->64->128, strides 1/2/2, BN) and the
                   BN projector 128->256->128, batch 256 x 2 views 1x28x28 (step only).
  fmnist_resnet18  SimCLR with a CIFAR-style ResNet-18 (3x3 stem, no max-pool), same batch.

Each step = forward + backward + optimizer step + loss.item(). Prints a human line and a
`RESULT {json}` line per case. Initialization is PyTorch's default for conv/linear (kaiming-uniform,
bound 1/sqrt(fan_in), the same scheme burn uses by default), GPT-2's N(0, 0.02) for the GPT.

    python bench/torch_step.py --case simclr_a,gpt --steps 10 --warmup 3 --threads 2

With --device cuda the models and batches live on the GPU, fp32 without TF32 (matmuls and cuDNN
convolutions), each timed step ends with torch.cuda.synchronize(), and the JSON adds the CUDA
caching allocator's peak reservation (device_mem_mib).
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LR = 1e-3
WEIGHT_DECAY = 1e-4  # same as the Rust bench (value does not change the cost)
AUTOCAST = False  # --matmul-precision autocast
DEVICE = torch.device("cpu")  # --device
ALL = ["simclr_a", "simclr_b", "gpt", "matmul"]
EXTRA = ["gpt_math", "fmnist_tiny", "fmnist_resnet18"]


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- SimCLR


class ConvNet(nn.Module):
    def __init__(self, cin, widths, strides, batchnorm):
        super().__init__()
        layers = []
        for w, s in zip(widths, strides):
            layers.append(nn.Conv2d(cin, w, 3, stride=s, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.ReLU())
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class ResNet(nn.Module):
    """selfsup's small-image ResNet: 3x3 stem (stride 1, no max-pool), BasicBlock stages."""

    def __init__(self, cin, depths=(2, 2, 2, 2), base=64):
        super().__init__()
        widths = [base << i for i in range(len(depths))]
        self.stem = nn.Sequential(nn.Conv2d(cin, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU())
        blocks, c = [], base
        for i, (w, d) in enumerate(zip(widths, depths)):
            for b in range(d):
                blocks.append(BasicBlock(c, w, (1 if i == 0 else 2) if b == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = c

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def projector(d_in, batchnorm):
    if batchnorm:
        return nn.Sequential(nn.Linear(d_in, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 128))
    return nn.Sequential(nn.Linear(d_in, 256), nn.ReLU(), nn.Linear(256, 128))


def nt_xent(z, tau):
    """Same loss as selfsup::methods::simclr::nt_xent: cosine similarities / tau, self masked out."""
    n2 = z.shape[0]
    n = n2 // 2
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / tau
    sim = sim.masked_fill(torch.eye(n2, dtype=torch.bool), -1e9)
    target = (torch.arange(n2) + n) % n2
    return F.cross_entropy(sim, target)


class SimCLR(nn.Module):
    def __init__(self, encoder, bn_projector):
        super().__init__()
        self.encoder = encoder
        self.projector = projector(encoder.out_dim, bn_projector)

    def loss(self, v1, v2):
        return nt_xent(self.projector(self.encoder(torch.cat([v1, v2], 0))), 0.5)


# ---------------------------------------------------------------- GPT


class Block(nn.Module):
    def __init__(self, d, heads, dff, sdpa):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.fc = nn.Linear(d, dff)
        self.proj = nn.Linear(dff, d)
        self.heads = heads
        self.sdpa = sdpa

    def attn(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            s = s.masked_fill(mask, torch.finfo(s.dtype).min)
            y = F.softmax(s, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=256, ctx=128, d=256, layers=4, heads=4, dff=1024, sdpa=True):
        super().__init__()
        self.wte = nn.Parameter(torch.randn(vocab, d) * 0.02)
        self.wpe = nn.Parameter(torch.randn(ctx, d) * 0.02)
        self.h = nn.ModuleList([Block(d, heads, dff, sdpa) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        proj_std = 0.02 / math.sqrt(2 * layers)
        for blk in self.h:
            for lin, std in ((blk.c_attn, 0.02), (blk.c_proj, proj_std), (blk.fc, 0.02), (blk.proj, proj_std)):
                nn.init.normal_(lin.weight, 0.0, std)
                nn.init.zeros_(lin.bias)

    def loss(self, ids, targets):
        b, t = ids.shape
        x = F.embedding(ids, self.wte) + self.wpe[:t]
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.t()
        return F.cross_entropy(logits.view(b * t, -1), targets.reshape(-1))


# ---------------------------------------------------------------- timing


def time_steps(step, warmup, steps):
    """Wall ms and process CPU ms (all threads) per timed step, and every step's loss."""
    times, cpu, losses = [], [], []
    for i in range(warmup + steps):
        c0, t0 = time.process_time(), time.perf_counter()
        loss = step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        ms = (time.perf_counter() - t0) * 1e3
        c = (time.process_time() - c0) * 1e3
        losses.append(loss)
        if i >= warmup:
            times.append(ms)
            cpu.append(c)
    return times, cpu, losses


def median(v):
    s = sorted(v)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def train_step_fn(model, batch_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY)

    def step():
        opt.zero_grad(set_to_none=True)
        if AUTOCAST:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = batch_fn()
        else:
            loss = batch_fn()
        value = loss.item()
        loss.backward()
        opt.step()
        return value

    return step


def run_case(case, warmup, steps):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    images, flops = None, None
    if case in ("simclr_a", "simclr_b", "fmnist_tiny", "fmnist_resnet18"):
        if case.startswith("simclr"):
            bn = case == "simclr_b"
            enc, shape = ConvNet(3, [32, 64, 128, 256], [1, 2, 2, 2], bn), (128, 3, 32, 32)
        elif case == "fmnist_tiny":
            bn, enc, shape = True, ConvNet(1, [32, 64, 128], [1, 2, 2], True), (256, 1, 28, 28)
        else:
            bn, enc, shape = True, ResNet(1), (256, 1, 28, 28)
            warmup, steps = min(warmup, 1), min(steps, 5)
        model = SimCLR(enc, bn).train().to(DEVICE)
        v1 = torch.randn(shape, generator=g).to(DEVICE)
        v2 = torch.randn(shape, generator=g).to(DEVICE)
        step = train_step_fn(model, lambda: model.loss(v1, v2))
        images = shape[0]
    elif case in ("gpt", "gpt_math"):
        b, t, vocab = 16, 128, 256
        model = GPT(sdpa=case == "gpt").train().to(DEVICE)
        tok = torch.randint(0, vocab, (b, t + 1), generator=g)
        ids, tgt = tok[:, :-1].contiguous().to(DEVICE), tok[:, 1:].contiguous().to(DEVICE)
        step = train_step_fn(model, lambda: model.loss(ids, tgt))
        d, l, dff = 256.0, 4.0, 1024.0
        per_token = l * (2.0 * (4 * d * d + 2 * d * dff) + 4.0 * t * d) + 2.0 * d * vocab
        flops = 3.0 * per_token * b * t
    elif case == "matmul":
        n = 2048
        a = torch.randn(n, n, generator=g).to(DEVICE)
        bm = torch.randn(n, n, generator=g).to(DEVICE)

        def step():
            return float((a @ bm)[0, 0])

        flops = 2.0 * n**3
    else:
        raise SystemExit(f"torch_step.py: unknown case {case}")

    times, cpu, losses = time_steps(step, warmup, steps)
    med, mn = median(times), min(times)
    peak = peak_rss_mib()
    out = {"framework": "pytorch", "case": case, "median_ms": med, "min_ms": mn, "times_ms": times,
           "cpu_ms": cpu, "median_cpu_ms": median(cpu), "peak_rss_mib": peak,
           "matmul_precision": "autocast" if AUTOCAST else
           "bf16" if torch.backends.mkldnn.matmul.fp32_precision == "bf16" else "fp32",
           "device": str(DEVICE)}
    line = (f"{case:<16} median {med:9.2f} ms/step  min {mn:9.2f}  cpu {median(cpu):9.0f} ms/step  "
            f"({len(times)} steps)  peak RSS {peak:.0f} MiB")
    if DEVICE.type == "cuda":
        out["device_mem_mib"] = torch.cuda.max_memory_reserved(DEVICE) / 2**20
        line += f"  device memory {out['device_mem_mib']:.0f} MiB"
    if images:
        out["images_per_s"] = images / (med / 1e3)
        line += f"  {out['images_per_s']:.0f} img/s"
    if flops:
        out["gflops"] = flops / (med / 1e3) / 1e9
        line += f"  {out['gflops']:.1f} GFLOP/s"
    if case != "matmul":
        out["losses"] = losses
        line += f"  loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    print(line, flush=True)
    print("RESULT " + json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=",".join(ALL), help="comma list, or 'all'")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--matmul-precision", choices=["fp32", "bf16", "autocast"], default="fp32",
                   help="bf16: fp32 tensors, bf16 inputs to oneDNN's matmuls and convolutions "
                        "(torch.backends.mkldnn.{matmul,conv}.fp32_precision), as selfsup's option; "
                        "autocast: the forward under torch.autocast('cpu', bfloat16) (bf16 activations)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--allow-tf32", action="store_true", help="with --device cuda: TF32 matmuls and convolutions")
    a = p.parse_args()
    global AUTOCAST, DEVICE
    AUTOCAST = a.matmul_precision == "autocast"
    DEVICE = torch.device(a.device)
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"torch_step.py: --device {a.device}, but torch {torch.__version__} sees no GPU")
        if a.matmul_precision != "fp32":
            raise SystemExit("torch_step.py: --matmul-precision is a CPU option; the GPU runs fp32")
        # Strict fp32 by default; --allow-tf32 measures PyTorch's TF32 tensor-core path (cuDNN's
        # default for convolutions), in case burn's CUDA matmul turns out to use TF32 itself.
        torch.backends.cuda.matmul.allow_tf32 = a.allow_tf32
        torch.backends.cudnn.allow_tf32 = a.allow_tf32
    elif DEVICE.type != "cpu":
        raise SystemExit(f"torch_step.py: unknown device {a.device}")
    if a.matmul_precision == "bf16":
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    cases = ALL + EXTRA if a.case == "all" else a.case.split(",")
    print(f"pytorch train_step bench: torch {torch.__version__}, device {DEVICE}, {torch.get_num_threads()} threads, "
          f"{a.steps} steps after {a.warmup} warm-up, matmul precision {a.matmul_precision}", flush=True)
    for c in cases:
        run_case(c.strip(), a.warmup, a.steps)


if __name__ == "__main__":
    main()
