"""The O(n²) cost of attention: time and peak memory of one self-attention call against the
sequence length n, for the four paths of :func:`attnlab.nn.attention.scaled_dot_product_attention`:

- explicit: softmax(QKᵀ/√d)V step by step, returning the (n, n) weights;
- fused: PyTorch's fused kernel (no (n, n) matrix is kept);
- top-k: the explicit scores, then each query's k largest (Explicit Sparse Transformer);
- window: the fused kernel with a local band mask (each query sees keys within w positions).

Exponents p of time ∝ n^p and memory ∝ n^p are fitted in log-log space over the longer half
of the lengths (where the quadratic term dominates). Batch 1, 8 heads of 64, float32,
inference, one thread unless --threads says otherwise. Memory is the peak resident memory
above the resident memory before the call (Linux VmHWM, reset through /proc/self/clear_refs);
elsewhere it is not measured.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.figures import line_figure
from attnlab.experiments.numbers import fit_power, mean_std, pm, spread_note
from attnlab.experiments.rules import Arm, Comparison, Metric, Reference, Rule

ORDER = 9
PATHS = ("explicit", "fused", "top-k", "window")
HEADS, HEAD_DIM, TOPK, WINDOW = 8, 64, 8, 32


def attention_call(path: str, n: int, seed: int = 0):
    """A no-argument function running one attention call of ``path`` on length ``n``."""
    from attnlab.nn.attention import scaled_dot_product_attention
    from attnlab.nn.masks import window_mask

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, generator=g) for _ in range(3))
    if path == "explicit":
        return lambda: scaled_dot_product_attention(q, k, v, need_weights=True)
    if path == "fused":
        return lambda: scaled_dot_product_attention(q, k, v)
    if path == "top-k":
        return lambda: scaled_dot_product_attention(q, k, v, topk=TOPK)
    # MultiHeadAttention builds the band mask at every call: so does this path
    return lambda: scaled_dot_product_attention(q, k, v, mask=window_mask(n, n, WINDOW))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def peak_memory_mb(fn) -> float | None:
    """Peak resident memory (MB) of one call above the memory before it; None where the kernel
    has no resettable peak (not Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status("VmRSS:")
        out = fn()
        peak = _status("VmHWM:")
    except OSError:
        return None
    del out
    return (peak - base) / 2**20


def median_time(fn, seconds: float, min_reps: int) -> float:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def measure(ctx: Context, lengths: list[int], cap: dict[str, int], seconds: float, min_reps: int) -> dict:
    out: dict = {p: {} for p in PATHS}
    for seed in ctx.seeds:
        for n in lengths:
            for p in PATHS:
                if n > cap.get(p, n):
                    continue
                fn = attention_call(p, n, seed)
                fn()  # warm-up: lazy initialisations are not the call's cost
                mem = peak_memory_mb(fn)
                t = median_time(fn, seconds, min_reps)
                out[p].setdefault(n, []).append({"seconds": t, "memory_mb": mem})
            ctx.log(f"seed {seed} n={n}: " + "  ".join(f"{p} {1e3 * out[p][n][-1]['seconds']:.2f} ms"
                                                          for p in PATHS if n in out[p]))
    return out


def exponents(points: dict[int, list[dict]], key: str) -> float | None:
    ns = sorted(points)
    ns = ns[len(ns) // 2:] if len(ns) >= 4 else ns  # the longer half
    ys = [statistics.fmean(x[key] for x in points[n]) for n in ns]
    if len(ns) < 2 or any(y is None or y <= 0 for y in ys):
        return None
    return fit_power(ns, ys)[0]


def per_seed(m: dict, seeds: int) -> dict:
    """Each path's time exponent and its peak memory at the longest length every path ran, one
    value per seed: what the rule reads."""
    shared = max(n for n in m["fused"] if all(n in m[p] for p in PATHS))
    return {p: {"time_exponent": [exponents({n: [v[i]] for n, v in m[p].items()}, "seconds") for i in range(seeds)],
                "memory_mb": [m[p][shared][i]["memory_mb"] for i in range(seeds)]} for p in PATHS}


def run(ctx: Context) -> Result:
    lengths = ctx.pick([128, 256, 512, 1024], [128, 256, 512, 1024, 2048, 4096, 8192])
    cap = ctx.pick({}, {"explicit": 4096, "top-k": 4096})  # the (H, n, n) scores: 2 GB at 8192
    m = measure(ctx, lengths, cap, seconds=ctx.pick(0.05, 1.0), min_reps=ctx.pick(2, 5))
    table, fits = [], {}
    for p in PATHS:
        fits[p] = {"time": exponents(m[p], "seconds"), "memory": exponents(m[p], "memory_mb")}
    for n in lengths:
        row = {"n": n}
        for p in PATHS:
            if n in m[p]:
                row[f"{p} ms"] = pm([1e3 * x["seconds"] for x in m[p][n]], 2)
                mems = [x["memory_mb"] for x in m[p][n]]
                row[f"{p} MB"] = pm(mems, 1) if None not in mems else "n/a"
        table.append(row)
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    table.append({"n": "fitted exponent p (time, memory)",
                  **{f"{p} ms": fmt(fits[p]["time"]) for p in PATHS}, **{f"{p} MB": fmt(fits[p]["memory"]) for p in PATHS}})

    def series(key, scale):
        s = {}
        for p in PATHS:
            ns = sorted(m[p])
            vals = [[scale * (x[key] or 0.0) for x in m[p][n]] for n in ns]
            s[p] = (ns, [mean_std(v)[0] for v in vals], [mean_std(v)[1] for v in vals])
        return s

    figs = {"time_vs_length": line_figure(series("seconds", 1e3), "sequence length n", "time of one call (ms)",
                                          "Attention time against sequence length", logx=True, logy=True,
                                          subtitle=f"batch 1, {HEADS} heads x {HEAD_DIM}, fp32, {ctx.threads} thread(s); "
                                                   f"top-k k={TOPK}, window w={WINDOW}")}
    if all(x["memory_mb"] is not None for p in PATHS for v in m[p].values() for x in v):
        figs["memory_vs_length"] = line_figure(series("memory_mb", 1.0), "sequence length n", "peak extra memory (MB)",
                                               "Attention memory against sequence length", logx=True, logy=True)
    mem_at = {p: mean_std([x["memory_mb"] or 0.0 for x in m[p][max(m[p])]])[0] for p in PATHS}
    reading = (
        "Fitted time exponents over the longer lengths (Table 1's self-attention: 2): "
        + ", ".join(f"{p} {fmt(fits[p]['time'])}" for p in PATHS) + ". "
        + "Peak extra memory at the longest length measured for each path: "
        + ", ".join(f"{p} {mem_at[p]:.1f} MB (n={max(m[p])}, exponent {fmt(fits[p]['memory'])})" for p in PATHS)
        + ". The explicit and top-k paths keep (n, n) scores; the fused kernel keeps none, the memory saving of "
          "fused/flash attention (its time stays quadratic). Top-k and our window path start from dense (n, n) scores "
          "or a dense band mask, so neither reaches the paper's restricted-attention cost O(r·n·d), which needs a banded "
          f"kernel this library does not have. {spread_note(len(ctx.seeds))} (each point: median of repeated calls).")
    return Result(table, reading, figs, {"measurements": m, "exponents": fits, "per_seed": per_seed(m, len(ctx.seeds))},
                  {"lengths": lengths, "caps": cap, "heads": HEADS, "head_dim": HEAD_DIM, "topk": TOPK, "window": WINDOW})


def _exponent_is_2(path: str, paper: str) -> Comparison:
    return Comparison(Metric("fitted exponent p of time ∝ n^p, over the longer half of the lengths", "lower"),
                      Arm(path, ("per_seed", path, "time_exponent")), Reference("2 (n²)", 2.0), "=", margin=0.25,
                      paper=paper + "; “equal” within ±0.25: nearer 2 than 1.5 or 2.5")


RULE = Rule(
    claim="self-attention costs O(n²·d) per layer (a restricted self-attention of neighbourhood r: O(r·n·d)); "
          "FlashAttention's memory is linear in the sequence length while its FLOPs stay quadratic",
    source="Vaswani et al. 2017, Table 1 (complexity per layer); Dao et al. 2022 (FlashAttention), Theorem 1 (O(N²d) "
           "FLOPs, O(N) additional memory)",
    figure="Table 1: O(n²·d) per layer; FlashAttention: O(n) memory, O(n²) time",
    comparisons=(
        _exponent_is_2("explicit", "Table 1: O(n²·d) per layer"),
        _exponent_is_2("fused", "FlashAttention Theorem 1: O(N²d) FLOPs"),
        Comparison(Metric("peak extra memory of one call at the longest length all paths ran (MB; n = 4096 at full "
                          "budget, 1024 at quick)", "lower"),
                   Arm("fused", ("per_seed", "fused", "memory_mb")), Arm("explicit", ("per_seed", "explicit", "memory_mb")),
                   "<", paper="FlashAttention Theorem 1: O(N) extra memory against the (n, n) scores of explicit "
                              "attention"),
    ),
)

EXPERIMENT = Experiment(
    name="attention-cost",
    question="How do the time and memory of attention grow with the sequence length?",
    anchor="Vaswani et al. 2017, Table 1: self-attention costs O(n²·d) per layer (restricted to a neighbourhood r: "
           "O(r·n·d)); FlashAttention (Dao et al. 2022) removes the O(n²) memory, not the O(n²) time",
    cost={"quick": "≈5 s", "full": "≈8 min"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    variables=(),  # trains no arm: it times attention at each length
)
