"""Image classification: ``attnlab train image``, ``attnlab eval``, ``attnlab predict``.

The library entry points are :func:`prepare` (data, model and task from configs),
:class:`ImageClassification` (the engine's :class:`~attnlab.train.Task`), :func:`load_run`,
:func:`evaluate_run` and :func:`predict_run`.

Data pipeline: uint8 images in memory -> (training) random crop with zero padding and/or
horizontal flip, drawn per sample from a generator seeded by (seed, epoch, step) -> float,
``(x / 255 - mean) / std`` with the per-channel mean and std of the training images (stored in
the checkpoint) -> model.
"""

from __future__ import annotations

import ast
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data import images as D
from attnlab.errors import CheckpointError, ConfigError, DataError
from attnlab.io import atomic_write_json
from attnlab.train import checkpoint as ckpt
from attnlab.train import distributed as dist
from attnlab.train.config import (
    TrainConfig,
    add_arguments,
    from_args,
    nonneg_int,
    opt,
    positive_int,
    to_dict,
    unit_float,
)
from attnlab.train.engine import Plan, Trainer, eval_shard, sharded_batches, steps_in_epoch
from attnlab.train.metrics import confusion_matrix, per_class_accuracy, plot_confusion, save_figure, topk_correct
from attnlab.train.run import open_run_dir, start

TASK = "image"
HELP = "image classification (ViT) on digits, MNIST, CIFAR-10 or a folder of images"
DESCRIPTION = """Train an image classifier (a Vision Transformer from the model registry) on a dataset read from
local files. Options below map one to one onto the fields of ImageTaskConfig (data and model) and TrainConfig
(training); the run directory receives checkpoints, metrics.csv/json and curves.png."""

AUGMENTS = ("auto", "none", "crop", "flip", "crop+flip")
#: What ``--augment auto`` means per dataset: (augment, crop padding).
AUTO_AUGMENT = {"digits": ("none", 1), "mnist": ("none", 2), "cifar10": ("crop+flip", 4), "folder": ("flip", 4)}


@dataclass
class ImageTaskConfig:
    """The data and the model of an image-classification run; fields are CLI options."""

    model: str | None = opt(None, "registered model name, e.g. vit_digits, vit_mnist, vit_cifar (required)", metavar="NAME")
    dataset: str = opt("digits", "digits (built in), mnist[:DIR], cifar10[:DIR] or folder:DIR; DIR defaults to "
                                 "$ATTNLAB_DATA/<name>", metavar="SPEC")
    model_arg: tuple[str, ...] = opt((), "override a field of the model's config, e.g. --model-arg depth=4 "
                                         "(repeatable)", metavar="KEY=VALUE")
    augment: str = opt("auto", "training augmentation: random crop with zero padding, horizontal flip, both or none; "
                               "auto = crop+flip for cifar10, flip for folders, none for digits and mnist", choices=AUGMENTS)
    crop_padding: int | None = opt(None, "padding (pixels) of the random crop (default 4 for cifar10 and folders, "
                                         "2 for mnist, 1 for digits)", nonneg_int, metavar="N")
    val_fraction: float = opt(0.0, "hold out this fraction of each training class for validation "
                                   "(0 = validate on the test split)", unit_float, metavar="X")
    eval_batch_size: int = opt(500, "images per batch when evaluating", positive_int, metavar="N")
    init: str | None = opt(None, "start from these weights: a run directory or a .safetensors file "
                                 "(a head of another size is re-initialised)", metavar="PATH")


# --- augmentation -------------------------------------------------------------------------------

class Augment:
    """Random crop with zero padding and horizontal flip on uint8 batches (B, C, H, W).

    ``params`` draws each sample's crop offset and flip from a generator, so the randomness of
    a sample depends only on its position in the global batch, not on the process holding it.
    """

    def __init__(self, padding: int = 0, flip: bool = False) -> None:
        self.padding, self.flip = int(padding), bool(flip)

    def __bool__(self) -> bool:
        return self.padding > 0 or self.flip

    def params(self, n: int, g: torch.Generator) -> dict[str, Tensor]:
        p = self.padding
        return {"dy": torch.randint(0, 2 * p + 1, (n,), generator=g), "dx": torch.randint(0, 2 * p + 1, (n,), generator=g),
                "flip": torch.rand(n, generator=g) < 0.5}

    def apply(self, x: Tensor, prm: dict[str, Tensor]) -> Tensor:
        b, _, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            xp = F.pad(x, (p, p, p, p))
            rows = prm["dy"][:, None] + torch.arange(h)  # (B, H)
            cols = prm["dx"][:, None] + torch.arange(w)  # (B, W)
            x = xp[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
            x = x.permute(0, 3, 1, 2).contiguous()
        if self.flip:
            x = torch.where(prm["flip"][:, None, None, None], x.flip(-1), x)
        return x

    def describe(self) -> dict:
        return {"crop_padding": self.padding, "flip": self.flip}


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, as fractions of 255."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for chunk in images.split(8192):
        x = chunk.to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
    mean = s / max(n, 1)
    std = (s2 / max(n, 1) - mean**2).clamp(min=1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(max(float(v), 1e-3), 6) for v in std]


class Normalize:
    """uint8 (B, C, H, W) -> float ``(x / 255 - mean) / std``."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = list(mean), list(std)
        self._cache: dict = {}

    def __call__(self, x: Tensor) -> Tensor:
        key = x.device
        if key not in self._cache:
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device)[:, None, None]
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)[:, None, None]
            self._cache[key] = (1.0 / (255.0 * std), -mean / std)
        a, b = self._cache[key]
        return torch.addcmul(b, x.float(), a)


# --- the task -----------------------------------------------------------------------------------

class ImageClassification:
    """Cross-entropy classification of in-memory uint8 images (the engine's Task)."""

    name = TASK
    main_metric = "acc"
    metric_label = "accuracy"
    metric_percent = True

    def __init__(self, train: D.ImageDataset, val: D.ImageDataset, classes: list[str], normalize: Normalize,
                 augment: Augment | None = None, eval_batch_size: int = 500, info: dict | None = None) -> None:
        self.train, self.val, self.classes = train, val, list(classes)
        self.normalize = normalize
        self.augment = augment or Augment()
        self.eval_batch_size = eval_batch_size
        self.info = dict(info or {})

    # engine protocol
    def steps_per_epoch(self, plan: Plan) -> int:
        return steps_in_epoch(len(self.train), plan.batch_size)

    def train_batches(self, plan: Plan):
        r, w = plan.rank, plan.world_size
        for step, micro in enumerate(sharded_batches(len(self.train), plan, shard=False), start=plan.start_step):
            g = torch.Generator().manual_seed(plan.step_seed(step))
            out = []
            for idx in micro:
                prm = self.augment.params(len(idx), g) if self.augment else None
                mine = idx[r::w]
                x = self.train.images[mine]
                if prm is not None:
                    x = self.augment.apply(x, {k: v[r::w] for k, v in prm.items()})
                out.append((x, self.train.labels[mine]))
            yield out

    def train_step(self, model: nn.Module, batch, cfg: TrainConfig):
        x, y = batch
        logits = model(self.normalize(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        correct = (logits.detach().argmax(-1) == y).sum()
        return loss, {"loss": loss.detach() * len(y), "correct": correct, "count": torch.tensor(len(y))}

    def eval_batches(self, plan: Plan):
        for idx in eval_shard(len(self.val), plan, self.eval_batch_size):
            yield self.val.images[idx], self.val.labels[idx]

    def eval_step(self, model: nn.Module, batch, cfg: TrainConfig | None = None) -> dict[str, Tensor]:
        x, y = batch
        logits = model(self.normalize(x)).float()
        top = topk_correct(logits, y, (1, 5))
        return {"loss": F.cross_entropy(logits, y, reduction="sum"), "correct": top[1], "top5": top[5],
                "count": torch.tensor(len(y)), "confusion": confusion_matrix(logits.argmax(-1), y, len(self.classes))}

    def summarize(self, sums: dict[str, Tensor]) -> dict[str, float]:
        n = max(float(sums.get("count", torch.tensor(0.0))), 1.0)
        out = {"loss": float(sums["loss"]) / n, "acc": float(sums["correct"]) / n}
        if "top5" in sums:
            out["top5"] = float(sums["top5"]) / n
        return out

    def record(self) -> dict:
        return {"labels": self.classes, "normalize": {"mean": self.normalize.mean, "std": self.normalize.std},
                "augment": self.augment.describe(), **self.info}


# --- building a run -----------------------------------------------------------------------------

def parse_model_args(items) -> dict:
    """``["depth=4", "qkv_bias=false", "img_size=32"]`` -> ``{"depth": 4, ...}``."""
    out = {}
    for item in items or ():
        key, eq, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"--model-arg {item!r} is not KEY=VALUE")
        low = val.strip().lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        elif low in ("none", "null"):
            out[key] = None
        else:
            try:
                out[key] = ast.literal_eval(val.strip())
            except (ValueError, SyntaxError):
                out[key] = val.strip()
    return out


def model_config(name: str, overrides: dict):
    """The config a model would have, without allocating its weights."""
    from attnlab.models import create_model

    try:
        with torch.device("meta"):
            probe = create_model(name, **overrides)
    except (RuntimeError, NotImplementedError):
        probe = create_model(name, **overrides)
    from attnlab.models import VisionTransformer

    if not isinstance(probe, VisionTransformer):
        raise ConfigError(f"model {name!r} is a {type(probe).__name__}, not an image classifier; "
                          "'attnlab train image' trains the vit_* models (attnlab.list_models('vit_*'))")
    return probe.cfg


def _size(img_size) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def check_channels(data_channels: int, in_chans: int, what: str, model: str) -> None:
    if data_channels != in_chans:
        kind = {1: "greyscale (1-channel)", 3: "RGB (3-channel)"}
        raise DataError(f"{what} has {kind.get(data_channels, f'{data_channels}-channel')} images but model {model} takes "
                        f"{kind.get(in_chans, f'{in_chans}-channel')} images (in_chans={in_chans}); choose a model for "
                        f"this data or pass --model-arg in_chans={data_channels}")


def prepare(tcfg: ImageTaskConfig, cfg: TrainConfig, model: nn.Module | None = None, splits: D.ImageSplits | None = None,
            progress: bool = True):
    """(model, task, meta) for a run: loads and checks the data, builds the model (or checks
    the one given), computes the normalisation and the augmentation."""
    if model is None and not tcfg.model:
        raise ConfigError("--model is required (e.g. --model vit_digits; see 'attnlab models' or attnlab.models.list_models())")
    overrides = parse_model_args(tcfg.model_arg)
    if model is None:
        mcfg = model_config(tcfg.model, overrides)
        img_size, in_chans, name = _size(mcfg.img_size), mcfg.in_chans, tcfg.model
    else:
        mcfg = getattr(model, "cfg", None)
        img_size = _size(getattr(mcfg, "img_size", None) or model.patch_embed.img_size)
        in_chans = getattr(mcfg, "in_chans", None) or model.patch_embed.proj.in_channels
        name = tcfg.model or type(model).__name__
    if splits is None:
        splits = D.load(tcfg.dataset, image_size=img_size, channels=in_chans if tcfg.dataset.startswith("folder") else None,
                        progress=progress)
    else:
        splits.train, splits.test = D.resize(splits.train, img_size), D.resize(splits.test, img_size)
    check_channels(splits.train.channels, in_chans, f"dataset {tcfg.dataset!r}", name)
    classes = splits.classes
    train, val = splits.train, splits.test
    val_source = "test split"
    if tcfg.val_fraction > 0:
        keep, held = D.stratified_split(train.labels, tcfg.val_fraction, seed=0)
        train, val = train.subset(keep), train.subset(held)
        val_source = f"{tcfg.val_fraction:.0%} of each training class held out"
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"dataset {tcfg.dataset!r}: empty training or validation split")
    if model is None:
        from attnlab.models import create_model

        if "num_classes" in overrides and overrides["num_classes"] != len(classes):
            raise ConfigError(f"--model-arg num_classes={overrides['num_classes']} but the dataset has {len(classes)} classes")
        overrides["num_classes"] = len(classes)
        model = create_model(tcfg.model, **overrides)
        if tcfg.init:
            init_from(model, tcfg.init)
    aug_name, pad = AUTO_AUGMENT[splits.name]
    aug_name = aug_name if tcfg.augment == "auto" else tcfg.augment
    pad = tcfg.crop_padding if tcfg.crop_padding is not None else pad
    augment = Augment(padding=pad if "crop" in aug_name else 0, flip="flip" in aug_name)
    mean, std = channel_stats(train.images)
    info = {"dataset": {"spec": splits.spec, "name": splits.name, "train_size": len(train), "val_size": len(val),
                        "test_size": len(splits.test), "val_source": val_source, "image_size": list(img_size),
                        "channels": in_chans, **{k: str(v) for k, v in splits.notes.items()}}}
    task = ImageClassification(train, val, classes, Normalize(mean, std), augment, tcfg.eval_batch_size, info)
    mcfg_now = getattr(model, "cfg", None)
    meta = {
        "model": {"name": name, "config": asdict(mcfg_now) if mcfg_now is not None else None,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "task_config": to_dict(tcfg),
        "title": f"{name} on {splits.name}",
    }
    return model, task, meta


def init_from(model: nn.Module, path: str) -> None:
    """Load starting weights; a classifier head of another shape is left freshly initialised."""
    p = Path(path)
    if p.is_dir():
        rec = ckpt.read_record(p, "best" if ckpt.has_record(p, "best") else "last")
        sd = ckpt.load_weights(p, rec)
    elif p.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p}: not a readable .safetensors file ({e})") from e
    else:
        raise CheckpointError(f"--init {p}: no such file or run directory")
    own = model.state_dict()
    head = [k for k in sd if k.startswith("head.") and k in own and sd[k].shape != own[k].shape]
    for k in head:
        sd[k] = own[k]
    ckpt.load_into(model, sd, str(p))


def add_train_arguments(parser) -> None:
    add_arguments(parser, ImageTaskConfig, "data and model")
    add_arguments(parser, TrainConfig, "training")


def default_run_dir(tcfg: ImageTaskConfig) -> Path:
    ds = re.sub(r"[^A-Za-z0-9_.-]+", "_", tcfg.dataset.split(":")[0])
    return Path("runs") / f"{tcfg.model}-{ds}-{time.strftime('%Y%m%d-%H%M%S')}"


RESUMABLE_CHANGES = {"device", "threads", "eval_batch_size"}


def train_from_args(args, log=print, progress: bool = True) -> dict:
    """``attnlab train image``: build everything from the parsed options and train."""
    base_t, base_tr, resume = None, None, getattr(args, "resume", None)
    if resume:
        rec = ckpt.read_record(resume, "last")
        if rec.get("task") != TASK:
            raise CheckpointError(f"{resume} is a {rec.get('task')!r} run, not an image-classification run")
        base_t, base_tr = rec["task_config"], rec["train_config"]
    tcfg, given_t = from_args(ImageTaskConfig, args, base_t)
    cfg, given_tr = from_args(TrainConfig, args, base_tr)
    if resume:
        norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
        changed = sorted(k for k in given_t | given_tr if k not in RESUMABLE_CHANGES and
                         norm(getattr(tcfg if k in given_t else cfg, k)) != norm((base_t if k in given_t else base_tr).get(k)))
        if changed:
            raise ConfigError(f"--resume continues {resume} with its own settings; these options differ from the run's: "
                              + ", ".join("--" + k.replace("_", "-") for k in changed))
    info = start(cfg)
    ckpt.seed_everything(cfg.seed)
    model, task, meta = prepare(tcfg, cfg, progress=progress and info.is_main)
    run_dir = Path(resume) if resume else Path(args.run_dir) if getattr(args, "run_dir", None) else default_run_dir(tcfg)
    if not resume:
        open_run_dir(run_dir, overwrite=getattr(args, "overwrite", False), task=TASK, cfg=cfg, info=info, record=meta,
                     command=getattr(args, "argv", None))
    trainer = Trainer(model, task, cfg, run_dir, meta=meta, log=log if info.is_main else None, progress=progress)
    if info.is_main and log is not None:
        n = meta["model"]["parameters"]
        ds = task.info["dataset"]
        log(f"{'resuming' if resume else 'training'} {meta['title']}: {n / 1e6:.2f}M parameters, "
            f"{ds['train_size']} training / {ds['val_size']} validation images ({ds['val_source']}), "
            f"{cfg.epochs} epochs x {trainer.steps_per_epoch} steps of {cfg.batch_size}"
            + (f" on {info.world_size} processes" if info.distributed else "") + f", device {trainer.device}")
    summary = trainer.fit(resume_from=run_dir if resume else None)
    summary["title"] = meta["title"]
    return summary


# --- using a trained run ------------------------------------------------------------------------

def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model of a run directory (``best`` or ``last`` weights) in eval mode, and its record."""
    from attnlab.models import create_model

    run_dir = Path(run_dir)
    if which == "best" and not ckpt.has_record(run_dir, "best") and ckpt.has_record(run_dir, "last"):
        which = "last"
    rec = ckpt.read_record(run_dir, which)
    if rec.get("task") != TASK:
        raise CheckpointError(f"{run_dir} is a {rec.get('task')!r} run, not an image-classification run")
    m = rec.get("model") or {}
    if not m.get("config"):
        raise CheckpointError(f"{run_dir}: the checkpoint does not record its model config")
    model = create_model(m["name"], **m["config"])
    ckpt.load_into(model, ckpt.load_weights(run_dir, rec), f"{run_dir}/{rec['path']}/{rec['weights']}")
    return model.to(device).eval(), rec


def _in_chans(model: nn.Module) -> int:
    return int(model.cfg.in_chans)


@torch.no_grad()
def evaluate_run(run_dir: str | Path, args) -> dict:
    """Accuracy, top-5, per-class accuracy and the confusion matrix of a run on a dataset's
    test split; writes results.json and confusion.png under ``RUN_DIR/eval/<dataset>/``."""
    device = dist.resolve_device(getattr(args, "device", None) or "cpu")
    model, rec = load_run(run_dir, getattr(args, "which", None) or "best", device)
    labels = rec["labels"]
    spec = getattr(args, "dataset", None) or rec["dataset"]["spec"]
    size = _size(model.cfg.img_size)
    splits = D.load(spec, image_size=size, channels=_in_chans(model) if spec.startswith("folder") else None)
    check_channels(splits.test.channels, _in_chans(model), f"dataset {spec!r}", rec["model"]["name"])
    unknown = [c for c in splits.classes if c not in labels]
    if unknown:
        raise DataError(f"dataset {spec!r} has classes the model does not know: {', '.join(unknown[:5])} "
                        f"(the model's classes: {', '.join(labels[:12])})")
    remap = torch.tensor([labels.index(c) for c in splits.classes])
    test = D.ImageDataset(splits.test.images, remap[splits.test.labels], labels)
    task = ImageClassification(test, test, labels, Normalize(**rec["normalize"]),
                               eval_batch_size=getattr(args, "batch_size", None) or 500)
    sums: dict[str, Tensor] = {}
    t0 = time.perf_counter()
    for x, y in task.eval_batches(Plan()):
        for k, v in task.eval_step(model, (x.to(device), y.to(device))).items():
            sums[k] = sums[k] + v.cpu() if k in sums else v.cpu()
    seconds = time.perf_counter() - t0
    s = task.summarize(sums)
    cm = sums["confusion"].long()
    pc = per_class_accuracy(cm.numpy())
    present = cm.sum(1) > 0
    name, _, where = spec.partition(":")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name + ("-" + Path(where).name if where else "")) + "-test"
    out_dir = Path(getattr(args, "out", None) or Path(run_dir) / "eval" / slug)
    results = {
        "run_dir": str(run_dir), "checkpoint": rec["path"], "dataset": spec, "split": "test", "images": int(sums["count"]),
        "accuracy": s["acc"], "top5": s.get("top5"), "loss": s["loss"],
        "per_class_accuracy": {labels[i]: float(pc[i]) for i in range(len(labels)) if present[i]},
        "confusion_matrix": cm.tolist(), "labels": labels, "images_per_s": round(int(sums["count"]) / max(seconds, 1e-9), 1),
    }
    fig = plot_confusion(cm.numpy(), labels, title=f"{rec['model']['name']} on {spec}")
    results["confusion_png"] = str(save_figure(fig, out_dir / "confusion.png"))
    results["results_json"] = str(out_dir / "results.json")
    atomic_write_json(out_dir / "results.json", results)
    return results


def format_eval(r: dict) -> str:
    lines = [f"{r['run_dir']} ({r['checkpoint']}) on {r['dataset']} test: {r['images']} images",
             f"  accuracy {100 * r['accuracy']:.2f}%   top-5 {100 * r['top5']:.2f}%   loss {r['loss']:.4f}",
             "  per class:"]
    items = list(r["per_class_accuracy"].items())
    w = max(len(k) for k, _ in items)
    for i in range(0, len(items), 4):
        lines.append("    " + "   ".join(f"{k:>{w}} {100 * v:6.2f}%" for k, v in items[i:i + 4]))
    lines.append(f"  confusion matrix: {r['confusion_png']}")
    lines.append(f"  results: {r['results_json']}")
    return "\n".join(lines)


def image_batch(paths: list[str], size: tuple[int, int], in_chans: int, convert: bool = False) -> Tensor:
    """uint8 (N, C, H, W) from image files. A colour image for a greyscale model is refused
    unless ``convert`` (greyscale images are repeated into RGB for colour models)."""
    xs = []
    for p in paths:
        im = D.open_image(p)
        ch = D.image_channels(im)
        if ch == 3 and in_chans == 1 and not convert:
            rgb = im.convert("RGB")
            import numpy as np

            a = np.asarray(rgb)
            if not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()):
                raise DataError(f"{p} is a colour (3-channel) image but the model takes greyscale (1-channel) images; "
                                "pass --convert to convert it to greyscale")
        if in_chans not in (1, 3):
            raise DataError(f"the model takes {in_chans}-channel images; only 1 and 3 are supported from image files")
        xs.append(D.image_to_tensor(im, size, in_chans))
    return torch.stack(xs)


@torch.no_grad()
def predict_run(run_dir: str | Path, inputs: list[str], args) -> list[dict]:
    """Top-k classes with probabilities for each image file."""
    device = dist.resolve_device(getattr(args, "device", None) or "cpu")
    model, rec = load_run(run_dir, getattr(args, "which", None) or "best", device)
    k = min(getattr(args, "top_k", None) or 5, len(rec["labels"]))
    x = image_batch(inputs, _size(model.cfg.img_size), _in_chans(model), getattr(args, "convert", False))
    norm = Normalize(**rec["normalize"])
    probs = model(norm(x.to(device))).float().softmax(-1).cpu()
    top = probs.topk(k, dim=-1)
    return [{"image": str(p), "top": [{"label": rec["labels"][int(i)], "index": int(i), "probability": round(float(v), 6)}
                                      for v, i in zip(top.values[n], top.indices[n])]}
            for n, p in enumerate(inputs)]


def format_predictions(preds: list[dict]) -> str:
    lines = []
    for p in preds:
        lines.append(p["image"])
        w = max(len(t["label"]) for t in p["top"])
        for t in p["top"]:
            bar = "█" * max(0, round(24 * t["probability"]))
            lines.append(f"  {t['label']:<{w}}  {100 * t['probability']:6.2f}%  {bar}")
    return "\n".join(lines)
