"""Multi-head self-attention: attnlab's MultiHeadAttention against nn.MultiheadAttention (its
default call, which also returns averaged weights, and need_weights=False), a naive
softmax(QKᵀ/√d)V with the same projections, and PyTorch's fused kernel alone.

Batch 1, 8 heads, head_dim 64 (d_model 512), float32, inference. Times: median over repeats,
all implementations interleaved in this one process (ratios are what matter). Peak memory:
each point in a fresh subprocess, peak RSS above the RSS after set-up (Linux clear_refs).

    python bench/attention.py              # writes the attention section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command, machine, write_section  # noqa: E402
from attnlab.convert import from_torch  # noqa: E402

E, H = 512, 8
IMPLS = ["attnlab", "torch_mha", "torch_mha_no_weights", "naive", "fused_kernel_only"]
QUADRATIC = {"torch_mha", "naive"}  # materialise (H, T, T) scores


def build(impl: str, t: int):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True).eval()
    x = torch.randn(1, t, E)
    if impl == "attnlab":
        ours = from_torch(ref)
        return lambda: ours(x)
    if impl == "torch_mha":
        return lambda: ref(x, x, x)[0]
    if impl == "torch_mha_no_weights":
        return lambda: ref(x, x, x, need_weights=False)[0]
    if impl == "naive":
        def naive():
            q, k, v = F.linear(x, ref.in_proj_weight, ref.in_proj_bias).view(1, t, 3, H, E // H).permute(2, 0, 3, 1, 4)
            w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(E // H), dim=-1)
            return ref.out_proj((w @ v).transpose(1, 2).reshape(1, t, E))
        return naive
    if impl == "fused_kernel_only":
        q, k, v = (torch.randn(1, H, t, E // H) for _ in range(3))
        return lambda: F.scaled_dot_product_attention(q, k, v)
    raise ValueError(impl)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure_memory(impl: str, t: int) -> float:
    """Peak extra resident memory (MB) of one call, after the inputs and weights exist."""
    fn = build(impl, t)
    with torch.inference_mode():
        fn()  # first call: lazy initialisations (thread pools, kernels) are not the op's memory
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
        base = _status("VmRSS:")
        out = fn()
        peak = _status("VmHWM:")
        del out
    return (peak - base) / 2**20


def time_all(lengths, max_quadratic, budget):
    rows = {}
    for t in lengths:
        fns = {i: build(i, t) for i in IMPLS if not (i in QUADRATIC and t > max_quadratic)}
        times = {i: [] for i in fns}
        with torch.inference_mode():
            for f in fns.values():
                f()  # warm-up
            deadline = time.perf_counter() + budget
            while time.perf_counter() < deadline or min(len(v) for v in times.values()) < 3:
                for i, f in fns.items():  # interleave: the machine's drift hits every impl alike
                    t0 = time.perf_counter()
                    f()
                    times[i].append(time.perf_counter() - t0)
                if min(len(v) for v in times.values()) >= 30:
                    break
        rows[t] = {i: statistics.median(v) for i, v in times.items()}
        print(t, {i: f"{s * 1e3:.1f} ms" for i, s in rows[t].items()}, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--max-quadratic", type=int, default=8192,
                    help="longest length for the implementations that materialise (H,T,T) scores (16384 needs ~17 GB)")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timing per length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--measure-memory", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory[0], int(args.measure_memory[1]))))
        return

    times = time_all(args.lengths, args.max_quadratic, args.budget)
    mem = {}
    for t in args.lengths:
        for i in IMPLS:
            if i in QUADRATIC and t > args.max_quadratic:
                continue
            r = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--measure-memory", i, str(t)],
                               capture_output=True, text=True, check=True)
            mem[t, i] = float(r.stdout.strip().splitlines()[-1])
        print(t, {i: f"{mem[t, i]:.0f} MB" for i in IMPLS if (t, i) in mem}, flush=True)

    def cell(t, i):
        if i not in times[t]:
            return "—"
        return f"{times[t][i] * 1e3:.1f} ms / {mem[t, i]:.0f} MB"

    lines = [
        "## Attention: multi-head self-attention, batch 1, 8 heads × 64",
        "",
        f"Command: `{command()}` — {machine()}.",
        "Each cell: median time per call / peak resident memory above the inputs and weights. "
        "`—`: not run (the (H, T, T) scores alone would need "
        f"{H * 16384 ** 2 * 4 / 2**30:.0f} GB at 16384). Speed-ups are nn.MultiheadAttention's time ÷ ours, same process.",
        "",
        "| T | attnlab MHA | nn.MHA (default) | nn.MHA need_weights=False | naive softmax(QKᵀ)V | fused kernel only "
        "| × vs nn.MHA default | × vs nn.MHA no weights |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in args.lengths:
        r = times[t]
        s1 = f"{r['torch_mha'] / r['attnlab']:.2f}" if "torch_mha" in r else "—"
        s2 = f"{r['torch_mha_no_weights'] / r['attnlab']:.2f}"
        lines.append(f"| {t} | " + " | ".join(cell(t, i) for i in IMPLS) + f" | {s1} | {s2} |")
    print("\n".join(lines))
    if not args.no_write:
        write_section("attention", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
