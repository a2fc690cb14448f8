"""DETR benchmarks (issue 12): the CPU recipe on the digit canvases, one-batch overfitting, and
``detr_resnet50`` inference against Hugging Face's DETR with identical weights.

- ``train``: ``attnlab train detect`` with the task's default recipe (detr_digits on 64x64
  digit canvases, new canvases every epoch, 500 fixed validation canvases; the CNN backbone
  pretrained on single digits, then frozen) under a wall-clock budget; COCO AP50 (pycocotools)
  after every epoch against minutes since the command started. Target: AP50 >= 0.5 within 15
  minutes on a 2-core CPU.
- ``overfit``: detr_digits on one batch of 16 canvases, AdamW 1e-3, 300 steps. Target: loss
  <= 10% of its first value.
- ``infer``: detr_resnet50 (41M parameters, 100 queries) at 800x800, batch 1, float32, against
  ``transformers.DetrForObjectDetection`` holding the same weights; the two run in turn in each
  round and the speed-up is the median over rounds of HF time / our time. Target: >= 1.0x.

    python bench/detect.py all --threads 2          # the three, ~20 minutes; writes BENCHMARKS.md
    python bench/detect.py train --minutes 15 --threads 2
    python bench/detect.py infer --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command, machine, write_section  # noqa: E402
from attnlab.models import create_model  # noqa: E402


def load_note() -> str:
    la = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1 / 5 / 15 min)"


def bench_train(minutes: float, threads: int, out: Path, epochs: int, train_size: int) -> tuple[str, dict]:
    from attnlab.runs import train, train_config
    from attnlab.tasks import get_spec

    spec = get_spec("detect")
    dc = spec.data_config(train_size=train_size)
    cfg = train_config(spec, {"epochs": epochs, "max_minutes": minutes, "threads": threads})
    run_dir = out / f"detect-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    before = load_note()
    t0 = time.perf_counter()
    summary = train(spec, dc, cfg, run_dir, model="detr_digits", log=print, progress=False)
    # minutes since the command started: the run's clock plus what came before it (data, backbone pretraining)
    offset = time.perf_counter() - t0 - summary["elapsed"]
    rec = json.loads((run_dir / "last.json").read_text())
    rows = json.loads((run_dir / "metrics.json").read_text())["epochs"]
    for r in rows:
        r["minutes"] = (r["time"] + offset) / 60
    hit = next((r for r in rows if r.get("val_AP50", 0) >= 0.5), None)
    best = max(rows, key=lambda r: r.get("val_AP50", 0))
    lines = [f"| {r['epoch']:g} | {r['step']} | {r['minutes']:.1f} | {r['train_loss']:.3f} | {r.get('val_AP', 0):.3f} | "
             f"{r.get('val_AP50', 0):.3f} | {r.get('val_AP75', 0):.3f} |" for r in rows]
    verdict = (f"AP50 {hit['val_AP50']:.3f} >= 0.5 after {hit['minutes']:.1f} min (target: within 15): **met**" if hit else
               f"best AP50 {best.get('val_AP50', 0):.3f} after {best['minutes']:.1f} min (target 0.5 within 15): **not met**")
    pre = rec.get("backbone_pretraining") or {}
    body = "\n".join([
        f"detr_digits ({summary['parameters']:,} parameters) on 64x64 digit canvases (1-3 digits, 14-28 px), "
        f"{train_size:,} new canvases per epoch, batch {cfg.batch_size}, AdamW lr {cfg.lr:g}, {threads} threads, budget "
        f"{minutes:g} min; the CNN backbone first classifies single digits for {pre.get('steps', 0)} steps "
        f"({pre.get('seconds', 0):.0f} s, counted in the minutes) and is then frozen. Validation: 500 fixed canvases, COCO "
        f"evaluator. Machine: {before} at the start, {load_note()} at the end.", "",
        "| epoch | step | minutes | train loss | AP | AP50 | AP75 |", "|---|---|---|---|---|---|---|", *lines, "",
        verdict, f"Run directory: `{run_dir}`."])
    return body, {"hit": hit is not None, "best_AP50": best.get("val_AP50", 0)}


def bench_overfit(steps: int, threads: int) -> str:
    from attnlab.data.canvases import CanvasConfig, make_canvases
    from attnlab.detect.loss import set_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ds = make_canvases(CanvasConfig(), 16, seed=0)
    model = create_model("detr_digits")
    x, targets = ds.images.float() / 255, ds.targets()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = set_loss(model(x), targets)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    first, last = losses[0], losses[-1]
    reached = next((i + 1 for i, v in enumerate(losses) if v <= 0.1 * first), None)
    verdict = (f"<= 10% of the first loss at step {reached}: **met**" if reached else
               f"lowest {min(losses) / first:.1%} of the first loss: **not met**")
    return (f"detr_digits on one batch of 16 canvases, AdamW 1e-3, clip 0.1, {steps} steps "
            f"({time.perf_counter() - t0:.0f} s, {threads} threads): loss {first:.2f} -> {last:.3f} "
            f"({last / first:.1%}); {verdict}")


def bench_infer(rounds: int, threads: int) -> str:
    import transformers

    from attnlab.checkpoints import load_checkpoint

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = transformers.DetrForObjectDetection(transformers.DetrConfig(use_pretrained_backbone=False, num_labels=91)).eval()
    ours = create_model("detr_resnet50").eval()
    load_checkpoint(ours, hf.state_dict())
    x = torch.randn(1, 3, 800, 800)
    with torch.inference_mode():
        diff = (ours(x)["boxes"] - hf(pixel_values=x).pred_boxes).abs().max().item()
        mine, theirs = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            ours(x)
            mine.append(time.perf_counter() - t)
            t = time.perf_counter()
            hf(pixel_values=x)
            theirs.append(time.perf_counter() - t)
    ratio = statistics.median(t / m for t, m in zip(theirs, mine))
    return (f"detr_resnet50 (41M parameters), 800x800, batch 1, float32, {threads} threads, {rounds} interleaved rounds: "
            f"ours {statistics.median(mine) * 1e3:.0f} ms, Hugging Face {statistics.median(theirs) * 1e3:.0f} ms (median); "
            f"speed-up HF/ours {ratio:.2f}x (target >= 1.0x: **{'met' if ratio >= 1.0 else 'not met'}**); largest box "
            f"difference {diff:.1e}. transformers {transformers.__version__}.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "overfit", "infer", "all"))
    p.add_argument("--minutes", type=float, default=15.0, help="(train) wall-clock budget (default: 15)")
    p.add_argument("--epochs", type=int, default=24, help="(train) epochs the schedule is planned for (default: 24)")
    p.add_argument("--train-size", type=int, default=4096, help="(train) canvases per epoch (default: 4096)")
    p.add_argument("--steps", type=int, default=300, help="(overfit) steps (default: 300)")
    p.add_argument("--rounds", type=int, default=7, help="(infer) interleaved rounds (default: 7)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--out", default="runs", help="(train) where the run directory goes (default: runs)")
    p.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    args = p.parse_args(argv)
    parts = []
    if args.what in ("train", "all"):
        body, _ = bench_train(args.minutes, args.threads, Path(args.out), args.epochs, args.train_size)
        parts.append("### Training on digit canvases\n\n" + body)
    if args.what in ("overfit", "all"):
        parts.append("### One-batch overfit\n\n" + bench_overfit(args.steps, args.threads))
    if args.what in ("infer", "all"):
        parts.append("### detr_resnet50 inference\n\n" + bench_infer(args.rounds, args.threads))
    text = "\n\n".join(parts)
    print(text)
    if not args.no_write:
        write_section(f"detect_{args.what}", f"## DETR ({args.what})\n\n`{command()}` — {machine()}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
