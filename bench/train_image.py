"""Image classification on real data: test accuracy against wall-clock time on this machine,
for attnlab's ViT and, with the same recipe, architecture and training engine, timm's ViT; the
compact Transformer's recipe and its side-by-side table (each trick taken away, the CNN).

    python bench/train_image.py speed                      # training images/s, ours vs timm
    python bench/train_image.py mnist --minutes 15          # MNIST within a time budget
    python bench/train_image.py cifar10 --minutes 60 --marks 15 30 60
    python bench/train_image.py cifar10-cct --minutes 60 --marks 15 30 45 60   # CCT-4/3x2
    python bench/train_image.py ablation --minutes 15      # every row of ABLATION, the same minutes each
    python bench/train_image.py mnist --minutes 15 --impl ours timm
    python bench/train_image.py mnist --epochs 1 --dataset digits --out /tmp/bench --threads 1   # a quick check

Data come from $ATTNLAB_DATA (default ../shared/data). A budget is turned into a fixed number
of epochs from a short throughput calibration (so the schedule, and the run, stay
deterministic); every epoch is evaluated on the test set and its wall-clock time recorded.
The timm run, when asked, uses the same number of epochs as ours. Both are trained by the
same engine on the same data pipeline (``attnlab.tasks.image``): ours is the recipe's registry
model with the recipe's fields, timm's ``VisionTransformer`` gets the same ones (ViT recipes).
Runs go to runs/bench-<recipe>-<impl>/ (metrics.csv, curves.png, checkpoints; ours can be read
by ``attnlab eval``); a summary is printed as Markdown and saved as runs/bench-<recipe>.json.
"Training" is the trainer's wall time (evaluation included); "whole run" adds building the model
and the calibration (the data, decoded once per command, are read before).
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
        "dataset": "mnist", "model": "vit_cifar",
        "arch": dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0,
                     global_pool="avg", class_token=False),
        "train": dict(batch_size=128, lr=3e-3, min_lr=1e-5, warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.1,
                      clip_grad=1.0),
        "augment": "crop", "crop_padding": 2,
    },
    "cifar10": {
        "dataset": "cifar10", "model": "vit_cifar",
        # "simple ViT" choices (Beyer et al. 2022): fixed 2-D sin-cos positions, average pooling, no class token.
        # Tried and dropped: 8x8 patches, 192 wide (2.6x the images/s, 40 epochs in the hour) learned far more
        # slowly per minute: 41.8% after 8 minutes, where these 4x4 patches were at 48%.
        "arch": dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                     global_pool="avg", class_token=False, pos_embed="sincos2d"),
        "train": dict(batch_size=128, lr=2e-3, min_lr=1e-5, warmup_epochs=1.0, weight_decay=0.05, label_smoothing=0.1,
                      clip_grad=1.0),
        "augment": "crop+flip", "crop_padding": 4,
    },
    # The compact Transformer (Hassani et al. 2021): CCT-4/3x2, two [3x3 conv, ReLU, max-pool] as the tokeniser
    # and SeqPool, 0.48M parameters. An hour on two cores is about 20 epochs, a fifteenth of the authors' 300, so
    # their regularisers (attention dropout 0.1, stochastic depth 0.1, mixup/cutmix, AutoAugment) are off: at this
    # budget the model underfits. Rate and schedule as the ViT recipe's.
    "cifar10-cct": {
        "dataset": "cifar10", "model": "cct_4_3x2_32",
        "arch": dict(attn_drop_rate=0.0, drop_path_rate=0.0),
        "train": dict(batch_size=128, lr=2e-3, min_lr=1e-5, warmup_epochs=1.0, weight_decay=0.05, label_smoothing=0.1,
                      clip_grad=1.0),
        "augment": "crop+flip", "crop_padding": 4,
    },
}


def _without(base: str, **change) -> dict:
    """Recipe ``base`` with ``change``'s entries replaced (``arch`` merged into the base's)."""
    rec = {**RECIPES[base], **change}
    rec["arch"] = {**RECIPES[base]["arch"], **change.get("arch", {})}
    return rec


# The side-by-side table of issue 23 (point 3): each trick of the compact model taken away alone, the plain
# ViT with shifted patches and locality self-attention (Lee et al. 2021) switched on, and the CNN people
# pick at the same size (ResNet-8, 0.31M parameters), all for the same minutes.
ABLATION = {
    "compact (CCT-4/3x2)": "cifar10-cct",
    "- conv tokeniser (4x4 patches)": "cifar10-cct-patches",
    "- SeqPool (class token)": "cifar10-cct-token",
    "- augmentation": "cifar10-cct-noaug",
    "plain ViT": "cifar10",
    "plain ViT + SPT + LSA": "cifar10-spt-lsa",
    "ResNet-8": "cifar10-resnet",
}
RECIPES.update({
    "cifar10-cct-patches": _without("cifar10-cct", arch=dict(tokenizer="patch", kernel_size=4)),
    "cifar10-cct-token": _without("cifar10-cct", arch=dict(seq_pool=False)),
    "cifar10-cct-noaug": _without("cifar10-cct", augment="none", crop_padding=0),
    "cifar10-spt-lsa": _without("cifar10", arch=dict(spt=True, lsa=True)),
    "cifar10-resnet": {**RECIPES["cifar10-cct"], "model": "resnet_cifar_small", "arch": {}},
})

#: the ViT-family recipes timm's VisionTransformer can twin (same fields)
TIMM_TWINS = ("mnist", "cifar10")


def build(impl: str, arch: dict, model: str = "vit_cifar"):
    """attnlab's registry ``model`` with the fields ``arch``, or (impl "timm") timm's VisionTransformer
    given the same fields (ViT recipes only)."""
    if impl == "ours":
        from attnlab.models import create_model

        return create_model(model, **arch)
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
        meta = model_record(model, model.name, arch)
    else:  # not a registry model: named and counted, not rebuildable by attnlab
        meta = {"model": {"name": "timm_vit", "config": None, "parameters": count_parameters(model)}, "model_args": arch}
    meta.update(data_config=to_dict(dc), title=title)
    ckpt.check_new_run_dir(run_dir, overwrite=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    open_run_dir(run_dir, overwrite=True, cfg=cfg, info=dist.info(), record={"task": image.TASK, **meta},
                 command=command().split())
    return meta


def run(args) -> dict:
    """Train one recipe (``args.what``) with each implementation of ``args.impl`` and summarise."""
    rec = RECIPES[args.what]
    dataset = args.dataset or rec["dataset"]
    label = args.what if args.dataset is None else f"{args.what}-{dataset.split(':')[0]}"  # runs/bench-<label>-<impl>
    results = {"dataset": dataset, "recipe": rec, "minutes": args.minutes, "runs": {}}
    if "timm" in args.impl and args.what not in TIMM_TWINS:
        raise SystemExit(f"--impl timm: timm has no twin of {rec['model']} (ViT recipes only: {', '.join(TIMM_TWINS)})")
    data = load(rec, dataset)
    for impl in args.impl:
        results["runs"][impl] = train_recipe(args, rec, data, impl, Path(args.out) / f"bench-{label}-{impl}")
    summarize(results, args.marks or [args.minutes])
    path = Path(args.out) / f"bench-{label}.json"
    atomic_write_json(path, results)
    print(f"results: {path}")
    return results


def ablation(args) -> dict:
    """Every recipe of :data:`ABLATION` for the same minutes, one table (issue 23, point 3)."""
    dataset = args.dataset or "cifar10"
    results = {"dataset": dataset, "minutes": args.minutes, "recipes": {}, "runs": {}}
    label = "ablation" if args.dataset is None else f"ablation-{dataset.split(':')[0]}"
    for row, name in ABLATION.items():
        rec = RECIPES[name]
        results["recipes"][row] = name
        results["runs"][row] = train_recipe(args, rec, load(rec, dataset), "ours", Path(args.out) / f"bench-{label}-{name}")
    summarize(results, args.marks or [args.minutes])
    path = Path(args.out) / f"bench-{label}.json"
    atomic_write_json(path, results)
    print(f"results: {path}")
    return results


def load(rec: dict, dataset: str):
    """The recipe's data, decoded once (the CIFAR JPEGs are cached after the first time)."""
    dc = image.ImageDataConfig(dataset=dataset, augment=rec["augment"], crop_padding=rec["crop_padding"], eval_batch_size=500)
    return image.load_data(dc, model_config(rec["model"], **rec["arch"]), None, progress=True, model_name=rec["model"])


def augment_ms(task, batch_size: int, rounds: int = 20) -> float:
    """Milliseconds the training augmentation takes per batch (median), on the training loop's path."""
    if not task.augment:
        return 0.0
    g = torch.Generator().manual_seed(0)
    x = task.train.images[:batch_size]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        task.augment.apply(x, task.augment.params(len(x), g))
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def train_recipe(args, rec: dict, data, impl: str, run_dir: Path) -> dict:
    """One training run: the budget (``--minutes``) turned into whole epochs by a short calibration,
    or ``--epochs``; every epoch evaluated on the test split and timed."""
    t_start = time.perf_counter()
    ckpt.seed_everything(args.seed)
    model = build(impl, rec["arch"], rec["model"])
    model.name = rec["model"] if impl == "ours" else "timm_vit"
    epochs = args.epochs
    def config(n: int) -> TrainConfig:
        return TrainConfig(epochs=n, seed=args.seed, device="cpu", log_every=20, **rec["train"])

    cfg = config(epochs or 1)
    task = image.make_task(data, model, cfg)
    ips = None
    if epochs is None:
        ips = calibrate(model, task, cfg)
        per_epoch = len(task.train) / ips + len(task.val) / (3 * ips)
        epochs = max(1, math.floor(args.minutes * 60 * args.fill / per_epoch))
        print(f"calibration: {ips:.0f} training images/s -> {epochs} epochs fit in {args.minutes} min", flush=True)
        cfg = config(epochs)
    aug = augment_ms(task, cfg.batch_size)
    meta = open_run(run_dir, impl, model, rec["arch"], data.config, cfg, f"{impl} {model.name} on {data.title}")
    t0 = time.perf_counter()
    tr = Trainer(model, task, cfg, run_dir, meta=meta, log=lambda s: print(s, flush=True), progress=False,
                 draw_curves=save_curves)
    tr.fit()
    wall = time.perf_counter() - t0
    rows = tr.history.epochs
    return {
        "model": model.name, "epochs": epochs, "wall_seconds": wall, "run_seconds": time.perf_counter() - t_start,
        "parameters": meta["model"]["parameters"], "calibrated_images_per_s": ips, "augment_ms_per_batch": aug,
        "train_images_per_s": statistics.median(r["samples_per_s"] for r in rows),
        "curve": [(round(r["time"] / 60, 2), r["val_acc"]) for r in rows],
        "final_acc": rows[-1]["val_acc"], "best_acc": max(r["val_acc"] for r in rows),
        "run_dir": str(run_dir),
    }


def acc_at(curve, minutes):
    seen = [a for t, a in curve if t <= minutes + 1e-9]
    return max(seen) if seen else None


def summarize(results: dict, marks) -> None:
    runs = results["runs"]
    print(f"\n### {results['dataset']}\n")
    head = "| run | model | epochs | params | train images/s | " + " | ".join(f"acc @ {m} min" for m in marks) + \
           " | final acc | training | whole run |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row, r in runs.items():
        cells = [f"{100 * a:.2f}%" if (a := acc_at(r["curve"], m)) is not None else "-" for m in marks]
        print(f"| {row} | {r['model']} | {r['epochs']} | {r['parameters'] / 1e6:.2f}M | {r['train_images_per_s']:.0f} | "
              + " | ".join(cells) + f" | {100 * r['final_acc']:.2f}% | {r['wall_seconds'] / 60:.1f} min "
              f"| {r['run_seconds'] / 60:.1f} min |")
    if "ours" in runs and "timm" in runs:
        print(f"\nimages/s ratio ours/timm: {runs['ours']['train_images_per_s'] / runs['timm']['train_images_per_s']:.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("speed", "ablation", *RECIPES),
                   help="speed: images/s ours vs timm; ablation: the compact model's table (issue 23); else a recipe")
    p.add_argument("--minutes", type=float, default=15.0, help="time budget of a training run")
    p.add_argument("--epochs", type=int, help="fixed number of epochs instead of the budget")
    p.add_argument("--marks", type=float, nargs="*", help="report the accuracy reached at these minutes")
    p.add_argument("--fill", type=float, default=0.92, help="fraction of the budget to plan for (the rest absorbs noise)")
    p.add_argument("--impl", nargs="+", default=["ours"], choices=("ours", "timm"))
    p.add_argument("--dataset", metavar="SPEC", help="(mnist, cifar10) train the recipe on this dataset instead of its "
                                                     "own (e.g. digits, or folder:DIR of RGB images, for a quick check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--arch", default="reference", choices=("reference", *TIMM_TWINS),
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
    elif args.what == "ablation":
        ablation(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
