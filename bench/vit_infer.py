"""ViT inference: attnlab's VisionTransformer against timm, torchvision and Hugging Face with
identical weights, float32, in one process.

For each model and batch size every implementation runs once per round, in turn, so drift of
the machine hits all alike; the reported speed-up is the median over rounds of the paired ratio
anchor time ÷ our time. GFLOP/s counts the matmul FLOPs of the forward pass (patch projection,
QKV, QKᵀ, AV, W_O, the MLP, the head) and is set against the matmul peak measured in the same
run on the model's own MLP shape ((B·N) × C @ C × 4C).

    python bench/vit_infer.py                 # Ti/16, S/16, B/16 at batch 1 and 8; writes BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command, machine, write_section  # noqa: E402
from attnlab.checkpoints import save_checkpoint  # noqa: E402
from attnlab.models import create_model  # noqa: E402


def vit_flops(cfg, batch: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward pass."""
    gh, gw = cfg.grid_size
    n = gh * gw + cfg.num_prefix_tokens
    c, hid = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    patch = 2 * gh * gw * cfg.patch_size**2 * cfg.in_chans * c
    block = 2 * n * c * 3 * c + 2 * 2 * n * n * c + 2 * n * c * c + 2 * 2 * n * c * hid
    return batch * (patch + cfg.depth * block + 2 * c * cfg.num_classes)


def matmul_peak(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


def anchors(ours, name: str, tmp: Path) -> dict:
    """timm, torchvision and HF models carrying our weights (exported in each one's own layout)."""
    cfg = ours.cfg
    out = {}
    import timm

    t = timm.create_model(name, pretrained=False).eval()
    t.load_state_dict(load_file(save_checkpoint(ours, tmp / "timm.safetensors", format="timm")))
    out["timm"] = t

    from torchvision.models.vision_transformer import VisionTransformer as TV

    tv = TV(image_size=cfg.img_size, patch_size=cfg.patch_size, num_layers=cfg.depth, num_heads=cfg.num_heads,
            hidden_dim=cfg.embed_dim, mlp_dim=int(cfg.embed_dim * cfg.mlp_ratio), num_classes=cfg.num_classes).eval()
    tv.load_state_dict(load_file(save_checkpoint(ours, tmp / "tv.safetensors", format="torchvision")))
    out["torchvision"] = tv

    from transformers import ViTForImageClassification

    hf_dir = save_checkpoint(ours, tmp / "hf", format="hf")
    hf_dir = hf_dir.parent if hf_dir.is_file() else hf_dir
    hf = ViTForImageClassification.from_pretrained(hf_dir, attn_implementation="sdpa").eval()
    out["hf"] = lambda x: hf(pixel_values=x).logits
    return out


def compiled(model):
    """torch.compile with inductor and freezing (weights become constants, linear layers get
    pre-packed oneDNN weights and fused epilogues): the inference path we recommend on CPU."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, dynamic=False)


def bench_point(fns: dict, x: torch.Tensor, budget: float, min_rounds: int = 5) -> dict[str, list[float]]:
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f(x)
            f(x)
        deadline = time.perf_counter() + budget
        while time.perf_counter() < deadline or len(times["attnlab"]) < min_rounds:
            for k, f in fns.items():
                t0 = time.perf_counter()
                f(x)
                times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of timing per (model, batch)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile column")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for name in args.models:
        ours = create_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            fns = {"attnlab": ours, **anchors(ours, name, Path(tmp))}
        if args.compile:
            fns["attnlab_compiled"] = compiled(ours)
        for b in args.batches:
            x = torch.randn(b, 3, *((ours.cfg.img_size,) * 2))
            with torch.inference_mode():
                ref = ours(x)
                diff = max((f(x) - ref).abs().max().item() for k, f in fns.items() if k != "attnlab")
            t = bench_point(fns, x, args.budget)
            n = ours.cfg.grid_size[0] * ours.cfg.grid_size[1] + ours.cfg.num_prefix_tokens
            peak = matmul_peak(b * n, ours.cfg.embed_dim, int(ours.cfg.embed_dim * ours.cfg.mlp_ratio))
            med = {k: statistics.median(v) for k, v in t.items()}
            ratio = {k: statistics.median(a / o for a, o in zip(t[k], t["attnlab"])) for k in t if k != "attnlab"}
            c = t.get("attnlab_compiled")
            compiled_vs_timm = statistics.median(a / o for a, o in zip(t["timm"], c)) if c else float("nan")
            gflops = vit_flops(ours.cfg, b) / med["attnlab"] / 1e9
            row = dict(model=name, batch=b, diff=diff, ips={k: b / v for k, v in med.items()}, ratio=ratio,
                       gflops=gflops, peak=peak, rounds=len(t["attnlab"]), compiled_vs_timm=compiled_vs_timm)
            rows.append(row)
            print(row, flush=True)

    lines = [
        "## ViT inference: images/s against timm, torchvision and Hugging Face (identical weights)",
        "",
        f"Command: `{command()}` — {machine()}, float32, `torch.inference_mode()`.",
        "Speed-up: median over rounds of the paired ratio anchor time ÷ attnlab time (> 1: attnlab faster). "
        "GFLOP/s: matmul FLOPs ÷ attnlab's median time; peak: a (B·N)×C @ C×4C matmul measured in the same run. "
        "max |Δlogit|: largest difference of any anchor's logits from ours.",
        "",
        "Compiled: the same model under `torch.compile` (inductor, freezing); its speed-up is against timm (eager).",
        "",
        "| model | batch | attnlab img/s | timm img/s | torchvision img/s | HF img/s | × timm | × torchvision | × HF "
        "| GFLOP/s | % of peak (peak) | compiled img/s | compiled × timm | max abs Δlogit | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ips, ra = r["ips"], r["ratio"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {ips['attnlab']:.1f} | {ips['timm']:.1f} | {ips['torchvision']:.1f} "
            f"| {ips['hf']:.1f} | "
            f"{ra['timm']:.2f} | {ra['torchvision']:.2f} | {ra['hf']:.2f} | {r['gflops']:.0f} | "
            f"{100 * r['gflops'] / r['peak']:.0f}% ({r['peak']:.0f}) | {ips.get('attnlab_compiled', float('nan')):.1f} | "
            f"{r['compiled_vs_timm']:.2f} | {r['diff']:.1e} | {r['rounds']} |"
        )
    print("\n".join(lines))
    if not args.no_write:
        write_section("vit_infer", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
