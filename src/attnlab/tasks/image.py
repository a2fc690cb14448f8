"""Image classification with a Vision Transformer: ``attnlab train image``, ``eval``, ``predict``.

Data pipeline: uint8 images in memory -> (training) random crop with zero padding and/or
horizontal flip, drawn per sample from a generator seeded by (seed, epoch, step) -> float,
``(x / 255 - mean) / std`` with the per-channel mean and std of the training images (stored in
the run) -> model. The run sequence itself is :mod:`attnlab.runs`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data import images as D
from attnlab.data.transforms import Augment, Normalize, channel_stats
from attnlab.errors import DataError
from attnlab.models.capabilities import ImageClassifier
from attnlab.tasks.spec import LoadedRun, TaskSpec
from attnlab.train.config import TrainConfig, nonneg_int, opt, positive_int, unit_float
from attnlab.train.engine import evaluation_sums, model_device
from attnlab.train.metrics import confusion_matrix, per_class_accuracy, topk_correct
from attnlab.train.sampler import Plan, eval_shard, sharded_batches, steps_in_epoch

TASK = "image"
AUGMENTS = ("auto", "none", "crop", "flip", "crop+flip")
#: What ``--augment auto`` means per dataset: (augment, crop padding).
AUTO_AUGMENT = {"digits": ("none", 1), "mnist": ("none", 2), "cifar10": ("crop+flip", 4), "folder": ("flip", 4)}


@dataclass
class ImageDataConfig:
    """The data of an image-classification run; fields are CLI options."""

    dataset: str = opt("digits", "digits (built in), mnist[:DIR], cifar10[:DIR] or folder:DIR; DIR defaults to "
                                 "$ATTNLAB_DATA/<name>", metavar="SPEC")
    augment: str = opt("auto", "training augmentation: random crop with zero padding, horizontal flip, both or none; "
                               "auto = crop+flip for cifar10, flip for folders, none for digits and mnist", choices=AUGMENTS)
    crop_padding: int | None = opt(None, "padding (pixels) of the random crop (default 4 for cifar10 and folders, "
                                         "2 for mnist, 1 for digits)", nonneg_int, metavar="N")
    val_fraction: float = opt(0.0, "hold out this fraction of each training class for validation "
                                   "(0 = validate on the test split)", unit_float, metavar="X")
    eval_batch_size: int = opt(500, "images per batch when evaluating", positive_int, metavar="N")
    init: str | None = opt(None, "start from these weights: a run directory or a .safetensors file "
                                 "(a head of another size is re-initialised)", metavar="PATH")


@dataclass
class ImageEvalConfig:
    """Options of ``attnlab eval`` for image runs."""

    dataset: str | None = opt(None, "evaluate on this dataset's test split (default: the run's own)", metavar="SPEC")
    batch_size: int = opt(500, "images per batch", positive_int, metavar="N")


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

    def num_eval_batches(self) -> int:
        return -(-len(self.val) // self.eval_batch_size)

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


# --- data ---------------------------------------------------------------------------------------

def _size(img_size) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def check_channels(data_channels: int, in_chans: int, what: str, model: str) -> None:
    if data_channels != in_chans:
        kind = {1: "greyscale (1-channel)", 3: "RGB (3-channel)"}
        raise DataError(f"{what} has {kind.get(data_channels, f'{data_channels}-channel')} images but model {model} takes "
                        f"{kind.get(in_chans, f'{in_chans}-channel')} images (in_chans={in_chans}); choose a model for "
                        f"this data or pass --model-arg in_chans={data_channels}")


def load_splits(spec: str, size: tuple[int, int], in_chans: int, progress: bool) -> tuple[D.ImageSplits, tuple[int, int]]:
    """The dataset at the model's size and channels, and the size its images had on disk
    (None for folders of mixed sizes, which are resized as they are read)."""
    if spec.split(":")[0].strip().lower() == "folder":
        return D.load(spec, image_size=size, channels=in_chans, progress=progress), None
    splits = D.load(spec, progress=progress)
    native = splits.train.size
    splits.train, splits.test = D.resize(splits.train, size), D.resize(splits.test, size)
    return splits, native


@dataclass
class ImageData:
    """The splits of a run, as the run layer sees them (:class:`attnlab.tasks.spec.TaskData`)."""

    config: ImageDataConfig
    splits: D.ImageSplits
    train: D.ImageDataset
    val: D.ImageDataset
    info: dict
    title: str
    model_fields: dict = field(default_factory=dict)

    def describe(self) -> str:
        ds = self.info["dataset"]
        return f"{ds['train_size']:,} training / {ds['val_size']:,} validation images ({ds['val_source']})"

    def write_files(self, run_dir: Path) -> None:
        pass


def load_data(dc: ImageDataConfig, mcfg, run_dir: Path | None = None, progress: bool = True,
              model_name: str = "the model") -> ImageData:
    """Load and check the dataset for a model of config ``mcfg`` (a ViTConfig), hold out the
    validation split; the number of classes becomes the model's ``num_classes``."""
    size, in_chans = _size(mcfg.img_size), mcfg.in_chans
    splits, native = load_splits(dc.dataset, size, in_chans, progress)
    check_channels(splits.train.channels, in_chans, f"dataset {dc.dataset!r}", model_name)
    train, val = splits.train, splits.test
    val_source = "test split"
    if dc.val_fraction > 0:
        keep, held = D.stratified_split(train.labels, dc.val_fraction, seed=0)
        train, val = train.subset(keep), train.subset(held)
        val_source = f"{dc.val_fraction:.0%} of each training class held out"
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"dataset {dc.dataset!r}: empty training or validation split")
    info = {"dataset": {"spec": splits.spec, "name": splits.name, "train_size": len(train), "val_size": len(val),
                        "test_size": len(splits.test), "val_source": val_source, "image_size": list(size),
                        "native_size": None if native is None else list(native), "channels": in_chans,
                        **{k: str(v) for k, v in splits.notes.items()}}}
    return ImageData(dc, splits, train, val, info, title=f"{splits.name}", model_fields={"num_classes": len(splits.classes)})


def make_task(data: ImageData, model: nn.Module, cfg: TrainConfig) -> ImageClassification:
    dc = data.config
    expected = init_from(model, dc.init) if dc.init else None
    aug_name, pad = AUTO_AUGMENT[data.splits.name]
    aug_name = aug_name if dc.augment == "auto" else dc.augment
    pad = dc.crop_padding if dc.crop_padding is not None else pad
    augment = Augment(padding=pad if "crop" in aug_name else 0, flip="flip" in aug_name)
    normalize = expected if expected is not None else Normalize(*channel_stats(data.train.images))
    data.title = f"{model.name} on {data.splits.name}"
    return ImageClassification(data.train, data.val, data.splits.classes, normalize, augment,
                               dc.eval_batch_size, data.info)


def init_from(model: nn.Module, path: str) -> Normalize | None:
    """Load starting weights (a run directory or a checkpoint file); a classifier head of another
    shape is left freshly initialised. Returns the normalisation the weights were trained with
    when their layout fixes it (torchvision's ImageNet statistics, Hugging Face's and JAX's 0.5),
    which fine-tuning keeps; None otherwise (the training images' own statistics are used)."""
    from attnlab.checkpoints import load_checkpoint

    stats = load_checkpoint(model, path, new_head="head.")["normalize"]
    return None if stats is None else Normalize(stats["mean"], stats["std"])


# --- using a trained run ------------------------------------------------------------------------

def load_extras(run_dir: Path, rec: dict) -> dict:
    return {"labels": rec["labels"], "normalize": Normalize(**rec["normalize"])}


def _slug(spec: str) -> str:
    name, _, where = spec.partition(":")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name + ("-" + Path(where).name if where else "")) + "-test"


def evaluate(run: LoadedRun, ec: ImageEvalConfig, progress: bool = True) -> tuple[dict, dict]:
    """Accuracy, top-5, per-class accuracy and the confusion matrix (``confusion_matrix``, rows the
    true class of ``labels``; the run layer draws it) on a dataset's test split."""
    model, rec = run.model, run.record
    labels = run.extras["labels"]
    spec = ec.dataset or rec["dataset"]["spec"]
    size, in_chans = _size(model.cfg.img_size), model.cfg.in_chans
    splits, native = load_splits(spec, size, in_chans, progress)
    trained = rec["dataset"].get("native_size")
    if native is not None and trained is not None and list(native) != list(trained):
        raise DataError(f"dataset {spec!r} has {native[0]}x{native[1]} images but {run.name} was trained on "
                        f"{trained[0]}x{trained[1]} images ({rec['dataset']['spec']}); resizing them would not test "
                        "what the model learned")
    check_channels(splits.test.channels, in_chans, f"dataset {spec!r}", run.name)
    unknown = [c for c in splits.classes if c not in labels]
    if unknown:
        raise DataError(f"dataset {spec!r} has classes the model does not know: {', '.join(unknown[:5])} "
                        f"(the model's classes: {', '.join(labels[:12])})")
    remap = torch.tensor([labels.index(c) for c in splits.classes])
    test = D.ImageDataset(splits.test.images, remap[splits.test.labels], labels)
    task = ImageClassification(test, test, labels, run.extras["normalize"], eval_batch_size=ec.batch_size)
    device = model_device(model)
    t0 = time.perf_counter()
    sums = evaluation_sums(task, model, task.eval_batches(Plan()), device, progress=progress, total=task.num_eval_batches())
    seconds = time.perf_counter() - t0
    s = task.summarize(sums)
    cm = sums["confusion"].long()
    pc = per_class_accuracy(cm.numpy())
    present = cm.sum(1) > 0
    results = {
        "slug": _slug(spec), "run_dir": str(run.run_dir), "checkpoint": rec["path"], "dataset": spec, "split": "test",
        "images": int(sums["count"]), "accuracy": s["acc"], "top5": s.get("top5"), "loss": s["loss"],
        "per_class_accuracy": {labels[i]: float(pc[i]) for i in range(len(labels)) if present[i]},
        "confusion_matrix": cm.tolist(), "labels": labels, "batch_size": ec.batch_size, "seconds": round(seconds, 3),
        "images_per_s": round(int(sums["count"]) / max(seconds, 1e-9), 1),
    }
    return results, {}


@torch.no_grad()
def predict(run: LoadedRun, inputs: list[str], top_k: int = 5, convert: bool = False) -> list[dict]:
    """Top-k classes with probabilities for each image file."""
    model, labels = run.model, run.extras["labels"]
    k = min(top_k, len(labels))
    x = D.read_model_images(inputs, model, convert)
    probs = model(run.extras["normalize"](x.to(model_device(model)))).float().softmax(-1).cpu()
    top = probs.topk(k, dim=-1)
    return [{"image": str(p), "top": [{"label": labels[int(i)], "index": int(i), "probability": round(float(v), 6)}
                                      for v, i in zip(top.values[n], top.indices[n])]}
            for n, p in enumerate(inputs)]


SPEC = TaskSpec(
    name=TASK,
    help="image classification (ViT, compact Transformer or a small ResNet) on digits, MNIST, CIFAR-10 or a folder of images",
    data_config=ImageDataConfig,
    load_data=load_data,
    make_task=make_task,
    model_kinds=(ImageClassifier,),
    load_extras=load_extras,
    eval_config=ImageEvalConfig,
    evaluate=evaluate,
    predict=predict,
)
