"""Image classification on real data: test accuracy against wall-clock time on this machine,
for attnlab's ViT and, with the same recipe, architecture and training engine, timm's ViT.

    python bench/train_image.py speed                      # training images/s, ours vs timm
    python bench/train_image.py mnist --minutes 15          # MNIST within a time budget
    python bench/train_image.py cifar10 --minutes 60 --marks 15 30 60
    python bench/train_image.py mnist --minutes 15 --impl ours timm
    python bench/train_image.py mnist --epochs 1 --dataset digits --out /tmp/bench --threads 1   # a quick check

Data come from $ATTNLAB_DATA (default ../shared/data). A budget is turned into a fixed number
of epochs from a short throughput calibration (so the schedule, and the run, stay
deterministic); every epoch is evaluated on the test set and its wall-clock time recorded.
The timm run, when asked, uses the same number of epochs as ours. Both are trained by the
same engine on the same data pipeline (``attnlab.tasks.image``): ours is the registry's
``vit_cifar`` with the recipe's fields, timm's ``VisionTransformer`` gets the same ones. Runs go
to runs/bench-<dataset>-<impl>/ (metrics.csv, curves.png, checkpoints; ours can be read by
``attnlab eval``); a summary is printed as Markdown and saved as runs/bench-<dataset>.json.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command  # noqa: E402
from attnlab.io import atomic_write_json  # noqa: E402
from attnlab.models.registry import count_parameters, model_config  # noqa: E402
from attnlab.runs.training import model_record, open_run_dir  # noqa: E402
from attnlab.tasks import image  # noqa: E402
from attnlab.train import TrainConfig, Trainer  # noqa: E402
from attnlab.train import checkpoint as ckpt  # noqa: E402
from attnlab.train import distributed as dist  # noqa: E402
from attnlab.train.config import to_dict  # noqa: E402
from attnlab.viz.curves import save_curves  # noqa: E402

# The reference architecture of the issue: 28x28 inputs, 4x4 patches, 192 wide, 6 blocks.
REFERENCE = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0)

RECIPES = {
    "mnist": {
        "dataset": "mnist",
        "arch": dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0,
                     global_pool="avg", class_token=False),
        "train": dict(batch_size=128, lr=3e-3, min_lr=1e-5, warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.1,
                      clip_grad=1.0),
        "augment": "crop", "crop_padding": 2,
    },
    "cifar10": {
        "dataset": "cifar10",
        # "simple ViT" choices (Beyer et al. 2022): fixed 2-D sin-cos positions, average pooling, no class token.
        # Tried and dropped: 8x8 patches, 192 wide (2.6x the images/s, 40 epochs in the hour) learned far more
        # slowly per minute: 41.8% after 8 minutes, where these 4x4 patches were at 48%.
        "arch": dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                     global_pool="avg", class_token=False, pos_embed="sincos2d"),
        "train": dict(batch_size=128, lr=2e-3, min_lr=1e-5, warmup_epochs=1.0, weight_decay=0.05, label_smoothing=0.1,
                      clip_grad=1.0),
        "augment": "crop+flip", "crop_padding": 4,
    },
}


OURS = "vit_cifar"  # the registry model the recipes' fields are set on


def build(impl: str, arch: dict):
    if impl == "ours":
        from attnlab.models import create_model

        return create_model(OURS, **arch)
    from timm.models.vision_transformer import VisionTransformer

    arch = {"global_pool": "token", "class_token": True, **arch}
    sincos = arch.pop("pos_embed", "learn") == "sincos2d"
    model = VisionTransformer(qkv_bias=True, **arch)
    if sincos:  # timm has no 2-D sin-cos option: give it the same fixed table as ours, frozen
        from attnlab.nn.position import SinCos2DPositionalEncoding

        g = arch["img_size"] // arch["patch_size"]
        prefix = 1 if arch["class_token"] else 0
        table = SinCos2DPositionalEncoding((g, g), arch["embed_dim"], prefix).table
        with torch.no_grad():
            model.pos_embed.copy_(table.reshape(model.pos_embed.shape))
        model.pos_embed.requires_grad_(False)
    return model


def train_steps_per_s(model, x, y, steps: int, warmup: int = 2) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            out.append(len(x) / (time.perf_counter() - t))
    return out


def speed(args) -> dict:
    """Training images/s of both implementations on one architecture, measured in alternation
    (A B A B ...) so that a change in the machine's load hits both."""
    torch.manual_seed(0)
    arch = REFERENCE if args.arch == "reference" else RECIPES[args.arch]["arch"]
    models = {impl: build(impl, arch) for impl in ("ours", "timm")}
    x = torch.randn(args.batch_size, arch["in_chans"], arch["img_size"], arch["img_size"])
    y = torch.randint(0, 10, (args.batch_size,))
    rates = {impl: [] for impl in models}
    for _ in range(args.rounds):
        for impl, m in models.items():
            rates[impl] += train_steps_per_s(m, x, y, args.steps)
    res = {impl: statistics.median(r) for impl, r in rates.items()}
    res["ratio"] = res["ours"] / res["timm"]
    res["arch"] = arch
    res["threads"] = torch.get_num_threads()
    print(f"training images/s on {arch['img_size']}x{arch['img_size']}, patch {arch['patch_size']}, width {arch['embed_dim']}, "
          f"depth {arch['depth']} (batch {args.batch_size}, {res['threads']} threads, median of {len(rates['ours'])} steps):")
    print(f"  attnlab {res['ours']:.1f}/s   timm {res['timm']:.1f}/s   ratio {res['ratio']:.2f}")
    return res


def calibrate(model, task, cfg, steps: int = 12) -> float:
    plan_bs = cfg.batch_size
    x = task.train.images[:plan_bs]
    y = task.train.labels[:plan_bs]
    import copy

    m = copy.deepcopy(model)
    return statistics.median(train_steps_per_s(m, task.normalize(x), y, steps))


def open_run(run_dir: Path, impl: str, model, arch: dict, dc, cfg, title: str) -> dict:
    """A new (or replaced) run directory with its run.json; the record every checkpoint carries."""
    if impl == "ours":
        meta = model_record(model, OURS, arch)
    else:  # not a registry model: named and counted, not rebuildable by attnlab
        meta = {"model": {"name": "timm_vit", "config": None, "parameters": count_parameters(model)}, "model_args": arch}
    meta.update(data_config=to_dict(dc), title=title)
    ckpt.check_new_run_dir(run_dir, overwrite=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    open_run_dir(run_dir, overwrite=True, cfg=cfg, info=dist.info(), record={"task": image.TASK, **meta},
                 command=command().split())
    return meta


def run(args) -> dict:
    rec = RECIPES[args.what]
    dataset = args.dataset or rec["dataset"]
    label = args.what if args.dataset is None else f"{args.what}-{dataset.split(':')[0]}"  # runs/bench-<label>-<impl>
    results = {"dataset": dataset, "recipe": rec, "minutes": args.minutes, "runs": {}}
    epochs = args.epochs
    dc = image.ImageDataConfig(dataset=dataset, augment=rec["augment"], crop_padding=rec["crop_padding"],
                               eval_batch_size=500)
    # Decoded once for both implementations (the CIFAR JPEGs are cached after the first time).
    data = image.load_data(dc, model_config(OURS, **rec["arch"]), None, progress=True, model_name=OURS)
    for impl in args.impl:
        ckpt.seed_everything(args.seed)
        model = build(impl, rec["arch"])
        model.name = OURS if impl == "ours" else "timm_vit"
        cfg = TrainConfig(epochs=epochs or 1, seed=args.seed, device="cpu", log_every=20, **rec["train"])
        task = image.make_task(data, model, cfg)
        if epochs is None:
            ips = calibrate(model, task, cfg)
            per_epoch = len(task.train) / ips + len(task.val) / (3 * ips)
            epochs = max(1, math.floor(args.minutes * 60 * args.fill / per_epoch))
            print(f"calibration: {ips:.0f} training images/s -> {epochs} epochs fit in {args.minutes} min", flush=True)
            cfg = TrainConfig(epochs=epochs, seed=args.seed, device="cpu", log_every=20, **rec["train"])
        run_dir = Path(args.out) / f"bench-{label}-{impl}"
        meta = open_run(run_dir, impl, model, rec["arch"], dc, cfg, f"{impl} ViT on {dataset}")
        t0 = time.perf_counter()
        tr = Trainer(model, task, cfg, run_dir, meta=meta, log=lambda s: print(s, flush=True), progress=False,
                     draw_curves=save_curves)
        tr.fit()
        wall = time.perf_counter() - t0
        rows = tr.history.epochs
        results["runs"][impl] = {
            "epochs": epochs, "wall_seconds": wall, "parameters": meta["model"]["parameters"],
            "train_images_per_s": statistics.median(r["samples_per_s"] for r in rows),
            "curve": [(round(r["time"] / 60, 2), r["val_acc"]) for r in rows],
            "final_acc": rows[-1]["val_acc"], "best_acc": max(r["val_acc"] for r in rows),
            "run_dir": str(run_dir),
        }
    summarize(results, args.marks or [args.minutes])
    path = Path(args.out) / f"bench-{label}.json"
    atomic_write_json(path, results)
    print(f"results: {path}")
    return results


def acc_at(curve, minutes):
    seen = [a for t, a in curve if t <= minutes + 1e-9]
    return max(seen) if seen else None


def summarize(results: dict, marks) -> None:
    runs = results["runs"]
    print(f"\n### {results['dataset']}\n")
    head = "| implementation | epochs | params | train images/s | " + " | ".join(f"acc @ {m} min" for m in marks) + \
           " | final acc | wall time |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for impl, r in runs.items():
        cells = [f"{100 * a:.2f}%" if (a := acc_at(r["curve"], m)) is not None else "-" for m in marks]
        print(f"| {impl} | {r['epochs']} | {r['parameters'] / 1e6:.2f}M | {r['train_images_per_s']:.0f} | " + " | ".join(cells)
              + f" | {100 * r['final_acc']:.2f}% | {r['wall_seconds'] / 60:.1f} min |")
    if "ours" in runs and "timm" in runs:
        print(f"\nimages/s ratio ours/timm: {runs['ours']['train_images_per_s'] / runs['timm']['train_images_per_s']:.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("speed", "mnist", "cifar10"))
    p.add_argument("--minutes", type=float, default=15.0, help="time budget of a training run")
    p.add_argument("--epochs", type=int, help="fixed number of epochs instead of the budget")
    p.add_argument("--marks", type=float, nargs="*", help="report the accuracy reached at these minutes")
    p.add_argument("--fill", type=float, default=0.92, help="fraction of the budget to plan for (the rest absorbs noise)")
    p.add_argument("--impl", nargs="+", default=["ours"], choices=("ours", "timm"))
    p.add_argument("--dataset", metavar="SPEC", help="(mnist, cifar10) train the recipe on this dataset instead of its "
                                                     "own (e.g. digits, or folder:DIR of RGB images, for a quick check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--arch", default="reference", choices=("reference", *RECIPES),
                   help="(speed) the issue's reference architecture or a recipe's")
    p.add_argument("--batch-size", type=int, default=128, help="(speed) batch size")
    p.add_argument("--steps", type=int, default=5, help="(speed) timed steps per round")
    p.add_argument("--rounds", type=int, default=4, help="(speed) alternations")
    p.add_argument("--out", default="runs", help="where runs and results go")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.what == "speed":
        res = speed(args)
        name = "bench-speed.json" if args.arch == "reference" else f"bench-speed-{args.arch}.json"
        atomic_write_json(Path(args.out) / name, res)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
