"""Object detection with DETR: ``attnlab train detect``, ``eval``, ``predict``.

Data: ``digits-canvas`` (built in) or ``mnist-canvas[:DIR]``: digit canvases drawn from a seed
(:mod:`attnlab.data.canvases`), new training canvases every epoch (canvas ids epoch x
train_size + i) and one fixed validation set; ``coco:ANNOTATIONS:IMAGES`` read by
:mod:`attnlab.data.coco` with ``--val-dataset`` or a held-out fraction, each image resized as
DETR resizes (as whole VOC photographs are, below); or Pascal VOC
``voc:PATH`` (:mod:`attnlab.tasks.detect_voc`: photographs at full resolution, tiled with
``--tile`` or resized as DETR resizes, validation on ``--val-dataset`` or a strip of each
photograph, ``--val-region``). Images are uint8 in memory, normalised ``(x / 255 - mean) / std``
(0 and 1 for canvases, ImageNet's for RGB); images of other sizes are padded at the right and
bottom with a pixel mask, and the padding is 0 after normalisation, as DETR's.

Training minimises DETR's set loss (:mod:`attnlab.detect.loss`), plus with ``--dn-groups G`` DN-DETR's
reconstruction loss of G noised copies of the ground truth (:mod:`attnlab.detect.denoising`; the
model is then built with ``denoising=True``); validation also scores the
detections with the COCO evaluator (AP, AP50, AP75, AR at ``--max-dets`` detections per image;
main metric AP50); tiled validation data is scored on whole photographs, the detections of their
tiles merged (:class:`attnlab.detect.tiles.TiledScenes`). The detections of an
evaluation are kept in the task until ``summarize``, so AP is computed on the predictions of
this process only: correct on one process (data-parallel runs would score rank 0's share).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from attnlab.data.canvases import CanvasConfig, DetectionSet, DigitCanvases
from attnlab.data.transforms import Normalize, default_normalization
from attnlab.detect.batching import pixel_mask, resize_keep_aspect
from attnlab.detect.boxes import cxcywh_to_xyxy
from attnlab.detect.coco_eval import MAX_DETS, coco_metrics, postprocess
from attnlab.detect.denoising import denoising_loss, make_denoising_queries
from attnlab.detect.loss import set_loss
from attnlab.detect.tiles import TiledScenes, predict_tiled
from attnlab.errors import ConfigError, DataError
from attnlab.models.capabilities import QueryDetector, SelfLossDetector
from attnlab.tasks.spec import LoadedRun, TaskSpec
from attnlab.train import distributed
from attnlab.train.config import TrainConfig, nonneg_float, nonneg_int, opt, positive_float, positive_int, unit_float
from attnlab.train.engine import evaluation_sums, model_device, progress_bar
from attnlab.train.sampler import Plan, eval_shard, sharded_batches, steps_in_epoch

TASK = "detect"


@dataclass
class DetectDataConfig:
    """The data of a detection run; fields are CLI options."""

    dataset: str = opt("digits-canvas", "digits-canvas (built in), mnist-canvas[:DIR] (DIR defaults to "
                                        "$ATTNLAB_DATA/mnist), coco:ANNOTATIONS.json:IMAGE_DIR, or Pascal VOC "
                                        "voc:DIR (XML files beside their images, or Annotations/ and JPEGImages/) or "
                                        "voc:FILE.xml (one photograph)", metavar="SPEC")
    val_dataset: str | None = opt(None, "COCO or VOC data: the validation split, in the form of --dataset (default: hold "
                                        "out --val-fraction of the COCO images, or --val-region of each VOC photograph)",
                                  metavar="SPEC")
    val_fraction: float = opt(0.1, "COCO data without --val-dataset: hold out this fraction of the images", unit_float,
                              metavar="X")
    val_region: float = opt(0.2, "VOC data without --val-dataset: validate on the right-most fraction F of the width of "
                                 "each photograph (a box goes to the side holding its centre)", unit_float, metavar="F")
    tile: int | None = opt(None, "VOC data: cut the photographs into S x S tiles at full resolution, for training, "
                                 "validation (scored on the whole photograph, the tiles' detections merged) and predict "
                                 "(default: none; each photograph is resized to shorter side img_size, as DETR)",
                           positive_int, metavar="S")
    tile_overlap: int = opt(120, "with --tile: pixels shared by neighbouring tiles, at least the largest object's side "
                                 "so that every object lies whole in some tile", nonneg_int, metavar="O")
    max_dets: int = opt(MAX_DETS, "COCO metrics: detections counted per image, the highest scored (COCO's maxDets; "
                                  "dense scenes such as tree crowns need more, e.g. 300)", positive_int, metavar="N")
    train_size: int = opt(4096, "canvases: training canvases per epoch (new ones each epoch)", positive_int, metavar="N")
    val_size: int = opt(500, "canvases: validation canvases (the same every epoch)", positive_int, metavar="N")
    min_digits: int = opt(1, "canvases: fewest digits on a canvas", positive_int, metavar="N")
    max_digits: int = opt(3, "canvases: most digits on a canvas", positive_int, metavar="N")
    min_scale: int = opt(14, "canvases: smallest pasted digit side, pixels", positive_int, metavar="PX")
    max_scale: int = opt(28, "canvases: largest pasted digit side, pixels", positive_int, metavar="PX")
    eval_batch_size: int = opt(100, "images per batch when evaluating", positive_int, metavar="N")
    pretrain_backbone: int = opt(300, "with a small CNN backbone: first train it for N steps to classify the images of "
                                      "--pretrain-data (the paper's backbone comes pretrained on ImageNet); 0 = from "
                                      "scratch", nonneg_int, metavar="N")
    pretrain_data: str | None = opt(None, "what --pretrain-backbone classifies: an image dataset of 'attnlab train "
                                          "image' (cifar10, mnist, digits, a folder) with the backbone's channels "
                                          "(default: single-digit canvases for canvas data; for other data no "
                                          "pretraining unless this is given)", metavar="SPEC")
    train_backbone: bool = opt(False, "keep training a pretrained backbone with the detector (at --backbone-lr), "
                                      "instead of freezing it")
    backbone_lr: float = opt(0.1, "a pretrained backbone's learning rate as a fraction of --lr, when it trains "
                                  "(--train-backbone, --init): the paper's 1e-5 against 1e-4; a backbone that starts "
                                  "from scratch (VOC or COCO data without --init) learns at --lr", positive_float,
                             metavar="F")
    init: str | None = opt(None, "start from these weights: a run directory, our .safetensors, a Hugging Face DETR "
                                 "directory or an original DETR .pth (a class head for other classes starts fresh); "
                                 "no backbone pretraining then", metavar="PATH")
    dn_groups: int = opt(0, "query denoising (DN-DETR): train the decoder also to reconstruct G noised copies of each "
                            "image's objects, fed beside the matching queries (the model is built with denoising=true; "
                            "DN-DETR uses 5); 0 = off", nonneg_int, metavar="G")
    dn_box_noise: float = opt(0.4, "with --dn-groups: box noise scale λ (centres move up to λ/2 of the box's size, sizes "
                                   "scale within 1 ± λ; DN-DETR's 0.4)", nonneg_float, metavar="X")
    dn_label_noise: float = opt(0.2, "with --dn-groups: probability that a denoising query's label is redrawn "
                                     "(DN-DETR's 0.2)", unit_float, metavar="P")


@dataclass
class DetectEvalConfig:
    """Options of ``attnlab eval`` for detection runs."""

    dataset: str | None = opt(None, "evaluate on this data (coco:ANNOTATIONS.json:IMAGE_DIR or voc:DIR|FILE.xml, in a "
                                    "tiled run's tiles; default: the run's validation data)", metavar="SPEC")
    batch_size: int = opt(100, "images per batch", positive_int, metavar="N")
    max_dets: int | None = opt(None, "detections counted per image by the COCO metrics (default: the run's --max-dets)",
                               positive_int, metavar="N")


# --- the task -----------------------------------------------------------------------------------

class Detection:
    """DETR's set loss on batches of (uint8 images, targets), or the losses a detector computes
    itself (a :class:`~attnlab.models.capabilities.SelfLossDetector`: RetinaNet's focal and box
    losses); COCO AP on validation."""

    name = TASK
    main_metric = "AP50"
    metric_label = "AP50 (COCO evaluator)"
    metric_percent = False

    def __init__(self, train: DetectionSet | DigitCanvases, val: DetectionSet, classes: list[str], category_ids: list[int],
                 normalize: Normalize, train_size: int, eval_batch_size: int = 100, info: dict | None = None,
                 backbone_lr: float = 1.0, budget_start: float | None = None, padded: bool = False,
                 val_tiles: TiledScenes | None = None, max_dets: int = MAX_DETS,
                 denoising: tuple[int, float, float] = (0, 0.0, 0.0), loss_names: tuple[str, ...] | None = None) -> None:
        self.train, self.val = train, val
        self.loss_names = loss_names  # a self-loss detector's terms, decided once (a DDP wrapper hides them); None: DETR
        self.denoising = denoising  # DN-DETR's (groups, box noise, label noise) of training; 0 groups: none
        self.padded = padded  # images padded at the right and bottom, their sizes the real pixels (VOC, COCO data)
        self.val_tiles = val_tiles  # val holds these tiles: score the whole scenes
        self.max_dets = max_dets
        self.budget_start = budget_start  # read by the trainer: --max-minutes counts the pretraining too
        self.lr_scales = {"backbone.": backbone_lr}  # read by the trainer's optimizer (DETR §4: 1e-5 vs 1e-4)
        self.classes, self.category_ids = list(classes), list(category_ids)
        self.normalize = normalize
        self.train_size = train_size
        self.eval_batch_size = eval_batch_size
        self.info = dict(info or {})
        self._detections: list[tuple[int, dict]] = []  # (validation index, detections) of the running evaluation

    def steps_per_epoch(self, plan: Plan) -> int:
        return steps_in_epoch(self.train_size, plan.batch_size)

    def _batch(self, ids: Tensor, epoch: int) -> tuple[Tensor, Tensor | None, list[dict]]:
        if isinstance(self.train, DigitCanvases):  # fresh canvases each epoch
            s = self.train.take((ids + epoch * self.train_size).tolist())
            return s.images, None, s.targets()
        return self.train.images[ids], self.mask(self.train, ids), self.train.targets(ids)

    def mask(self, ds: DetectionSet, ids: Tensor) -> Tensor | None:
        """The pixel mask (B, H, W) of images ``ids`` of ``ds``, None when none is padded."""
        sizes, hw = [ds.sizes[int(i)] for i in ids], tuple(ds.images.shape[-2:])
        return pixel_mask(sizes, *hw) if self.padded and any(s != hw for s in sizes) else None

    def inputs(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """uint8 images -> normalised, the padding 0 (as DETR pads normalised images)."""
        x = self.normalize(x)
        return x if mask is None else x.masked_fill(~mask[:, None], 0.0)

    def train_batches(self, plan: Plan):
        for micro in sharded_batches(self.train_size, plan):
            yield [self._batch(ids, plan.epoch) for ids in micro]

    def train_step(self, model: nn.Module, batch, cfg: TrainConfig):
        x, mask, targets = batch
        if self.loss_names is not None:  # the detector computes its own losses
            out, n = model(self.inputs(x, mask), mask, targets), torch.tensor(len(x))
            return out["loss"], {k: out[k].detach() * n for k in ("loss", *self.loss_names)} | {"count": n}
        groups, box_noise, label_noise = self.denoising
        dn = make_denoising_queries(targets, groups, box_noise, label_noise, len(self.classes)) if groups else None
        out = model(self.inputs(x, mask), mask) if dn is None else model(self.inputs(x, mask), mask, denoising=dn)
        parts = set_loss(out, targets)
        n = torch.tensor(len(x))
        logged = {"ce": parts["ce"] * n, "l1": parts["l1"] * n, "giou": parts["giou"] * n, "count": n}
        loss = parts["loss"]
        if dn is not None:  # DN-DETR: L = set loss + L_dn
            dn_parts = denoising_loss(out["dn"], dn, targets)
            loss = loss + dn_parts["loss"]
            logged.update({f"dn_{k}": dn_parts[k] * n for k in ("ce", "l1", "giou")})
        return loss, {"loss": loss.detach() * n, **logged}

    def eval_batches(self, plan: Plan):
        self._detections = []
        for idx in eval_shard(len(self.val), plan, self.eval_batch_size):
            yield self.val.images[idx], self.mask(self.val, idx), self.val.targets(idx), idx

    def num_eval_batches(self) -> int:
        return -(-len(self.val) // self.eval_batch_size)

    def eval_step(self, model: nn.Module, batch, cfg: TrainConfig | None = None) -> dict[str, Tensor]:
        x, mask, targets, idx = batch
        if self.loss_names is not None:  # its losses and its detections from one forward
            out = model(self.inputs(x, mask), mask, targets)
            parts = {k: out[k] for k in ("loss", *self.loss_names)}
        else:
            out = model(self.inputs(x, mask), mask)
            parts = {k: v for k, v in set_loss(out, targets).items() if k in ("loss", "ce", "l1", "giou")}
        dets = postprocess(out["logits"], out["boxes"], [self.val.sizes[int(i)] for i in idx])
        self._detections += list(zip(idx.tolist(), dets))
        n = torch.tensor(len(x))
        return {k: v * n for k, v in parts.items()} | {"count": n, "scored": n}

    def summarize(self, sums: dict[str, Tensor]) -> dict[str, float]:
        n = max(float(sums.get("count", torch.tensor(0.0))), 1.0)
        out = {k: float(v) / n for k, v in sums.items() if k not in ("count", "scored")}  # every loss term
        if "scored" in sums:  # an evaluation: score the detections it kept
            out.update(self.coco_metrics())
        return out

    def coco_metrics(self) -> dict[str, float]:
        """COCO AP over the whole validation set: under data parallelism each process scored its
        share, so the detections of every process are gathered first (every process calls this)."""
        mine = [(i, {k: v.cpu() if isinstance(v, Tensor) else v for k, v in d.items()}) for i, d in self._detections]
        dets = sorted((d for part in distributed.all_gather_object(mine) for d in part), key=lambda d: d[0])
        self._detections = []
        if self.val_tiles is not None:
            scored = self.val_tiles.merge([d for _, d in dets])
            gts = [{"size": s.size, "labels": s.labels, "boxes": s.boxes} for s in self.val_tiles.scenes]
            return coco_metrics(gts, scored, self.category_ids, self.max_dets)
        gts = []
        for i, _ in dets:
            h, w = self.val.sizes[i]
            xyxy = cxcywh_to_xyxy(self.val.boxes[i]) * torch.tensor([w, h, w, h])
            gts.append({"size": (h, w), "labels": self.val.labels[i], "boxes": xyxy})
        return coco_metrics(gts, [d for _, d in dets], self.category_ids, self.max_dets)

    def record(self) -> dict:
        return {"labels": self.classes, "category_ids": self.category_ids,
                "normalize": {"mean": self.normalize.mean, "std": self.normalize.std}, **self.info}


# --- data ---------------------------------------------------------------------------------------

@dataclass
class DetectData:
    """The data of a run, as the run layer sees it (:class:`attnlab.tasks.spec.TaskData`)."""

    config: DetectDataConfig
    train: DetectionSet | DigitCanvases
    val: DetectionSet
    classes: list[str]
    category_ids: list[int]
    info: dict
    title: str
    model_fields: dict = field(default_factory=dict)
    val_tiles: TiledScenes | None = None  # tiled VOC data: the validation photographs
    progress: bool = False  # show the backbone pretraining's progress bar
    budget_start: float = field(default_factory=time.perf_counter)  # when the command began reading its data

    def describe(self) -> str:
        ds = self.info["dataset"]
        pre = self.info.get("backbone_pretraining")
        line = f"{ds['train']} training / {ds['val_size']:,} validation images"
        return line + (f"; {ds['read']}" if "read" in ds else "") + (f"; {pretraining_line(pre)}" if pre else "")

    def write_files(self, run_dir: Path) -> None:
        pass


def canvas_config(dc: DetectDataConfig, size: int) -> CanvasConfig:
    if not _is_canvas(dc.dataset):
        raise DataError(f"{dc.dataset!r} is not a canvas dataset; use digits-canvas or mnist-canvas[:DIR]")
    name, _, where = dc.dataset.partition(":")
    source = "digits" if name == "digits-canvas" else "mnist" + (f":{where}" if where else "")
    return CanvasConfig(size=size, min_digits=dc.min_digits, max_digits=dc.max_digits, min_scale=dc.min_scale,
                        max_scale=dc.max_scale, source=source)


def _is_canvas(spec: str) -> bool:
    return spec.split(":")[0] in ("digits-canvas", "mnist-canvas")


def _many_sizes(spec: str) -> bool:
    """VOC and COCO images come in many sizes: resized as DETR (or tiled, VOC) and padded with a
    pixel mask; canvases are one square."""
    return spec.startswith(("voc:", "coco:"))


def load_data(dc: DetectDataConfig, mcfg, run_dir: Path | None = None, progress: bool = True,
              model_name: str = "the model") -> DetectData:
    """The training and validation data at the model's image size; the number of classes
    becomes the model's ``num_classes``."""
    from attnlab.data.coco import read_coco

    t0 = time.perf_counter()
    check_denoising(dc, mcfg)
    size = int(mcfg.img_size)
    if _is_canvas(dc.dataset):
        if dc.val_dataset:
            raise DataError("--val-dataset is for COCO data; canvases draw their own validation set (--val-size)")
        if mcfg.in_chans != 1:
            raise DataError(f"digit canvases are greyscale but model {model_name} takes {mcfg.in_chans}-channel images; "
                            "pass --model-arg in_chans=1")
        cc = canvas_config(dc, size)
        train = DigitCanvases(cc, "train")
        val = DigitCanvases(cc, "val").take(range(dc.val_size))
        classes, ids = train.classes, list(range(1, len(train.classes) + 1))
        info = {"canvas": {k: getattr(cc, k) for k in ("size", "min_digits", "max_digits", "min_scale", "max_scale",
                                                         "source")}}
        train_desc = f"{dc.train_size:,} new canvases per epoch"
    elif dc.dataset.startswith("coco:"):
        from attnlab.tasks.detect_voc import longest_side

        full, ids, classes = read_coco(dc.dataset, size, mcfg.in_chans, longest_side(size), mcfg.stride)
        if dc.val_dataset:
            val, vids, _ = read_coco(dc.val_dataset, size, mcfg.in_chans, longest_side(size), mcfg.stride)
            if vids != ids:
                raise DataError(f"{dc.val_dataset} has other categories than {dc.dataset}")
            train = full
        else:
            g = torch.Generator().manual_seed(0)
            order = torch.randperm(len(full), generator=g)
            k = max(1, round(dc.val_fraction * len(full))) if dc.val_fraction > 0 else 0
            if k == 0 or k >= len(full):
                raise DataError(f"{dc.dataset}: {len(full)} images cannot be split into training and validation; "
                                "pass --val-dataset or another --val-fraction")
            train, val = full.subset(order[k:]), full.subset(order[:k])
        info = {}
        train_desc = f"{len(train):,}"
    elif dc.dataset.startswith("voc:"):
        from attnlab.tasks.detect_voc import read_voc_sets

        sets = read_voc_sets(dc, mcfg)
        train, val, val_tiles, classes = sets.train, sets.val, sets.val_tiles, sets.classes
        ids = list(range(1, len(classes) + 1))
        info = {"dataset": {"read": sets.line}}
        train_desc = f"{len(train):,}"
    else:
        raise DataError(f"unknown detection dataset {dc.dataset!r}; use digits-canvas, mnist-canvas[:DIR], "
                        "coco:ANNOTATIONS.json:IMAGE_DIR or voc:DIR|FILE.xml")
    if not dc.dataset.startswith("voc:"):
        val_tiles = None
        if dc.tile:
            raise DataError("--tile is for VOC data (voc:DIR or voc:FILE.xml)")
    if run_dir is not None:  # resuming: the backbone was pretrained in the first session, its weights are in the run
        from attnlab.checkpoints.rundir import read_record

        info["backbone_pretraining"] = read_record(run_dir, "last").get("backbone_pretraining")
    train_size = dc.train_size if _is_canvas(dc.dataset) else len(train)
    info["dataset"] = {**info.get("dataset", {}), "spec": dc.dataset, "val_spec": dc.val_dataset, "train": train_desc,
                       "train_size": train_size, "val_size": len(val), "image_size": size}
    return DetectData(dc, train, val, classes, ids, info, title=dc.dataset, model_fields={
        "num_classes": len(classes), "denoising": dc.dn_groups > 0}, val_tiles=val_tiles, progress=progress, budget_start=t0)


def check_denoising(dc: DetectDataConfig, mcfg) -> None:
    """--dn-groups is the one switch of query denoising: the model's ``denoising`` follows it."""
    if dc.dn_groups and not hasattr(mcfg, "denoising"):
        raise ConfigError("--dn-groups is DETR's query denoising; this model has no denoising queries")
    if getattr(mcfg, "denoising", False) and not dc.dn_groups:
        raise ConfigError("query denoising is switched on by --dn-groups G (DN-DETR: 5), not by --model-arg denoising")
    if not dc.dn_groups and (dc.dn_box_noise, dc.dn_label_noise) != (DetectDataConfig.dn_box_noise,
                                                                     DetectDataConfig.dn_label_noise):
        raise ConfigError("--dn-box-noise and --dn-label-noise need --dn-groups G (query denoising)")


class PretrainImages:
    """The labelled images a backbone first learns to classify, batch by batch: single-digit
    canvases (their own stream, seed 1) or an image dataset's training set, cycled in one fixed
    order (seed 1)."""

    def __init__(self, canvases: CanvasConfig | None = None, spec: str | None = None, channels: int = 1) -> None:
        self.one = self.ds = None
        if spec is None:
            self.one = DigitCanvases(replace(canvases, min_digits=1, max_digits=1), "train", seed=1)
            self.classes, self.name = list(self.one.classes), "single-digit canvases"
            return
        from attnlab.data.images import load

        self.ds = load(spec, progress=False).train
        if self.ds.images.shape[1] != channels:
            raise ConfigError(f"--pretrain-data {spec}: {self.ds.images.shape[1]}-channel images for a {channels}-channel "
                              "backbone; choose a dataset with the model's channels (in_chans)")
        self.order = torch.randperm(len(self.ds), generator=torch.Generator().manual_seed(1))
        self.classes, self.name = list(self.ds.classes), spec

    def batch(self, step: int, size: int) -> tuple[Tensor, Tensor]:
        """uint8 images (B, C, H, W) and labels (B,) of batch ``step``."""
        if self.one is not None:
            s = self.one.take(range(step * size, (step + 1) * size))
            return s.images, torch.cat(s.labels)
        idx = self.order[torch.arange(step * size, (step + 1) * size) % len(self.order)]
        return self.ds.images[idx], self.ds.labels[idx]


def pretrain_backbone(model: nn.Module, images: PretrainImages, steps: int, normalize: Normalize, seed: int = 0,
                      batch_size: int = 64, lr: float = 2e-3, deadline: float | None = None,
                      progress: bool = False) -> dict:
    """Train the backbone alone to classify ``images`` (global max pool, a linear head thrown away
    afterwards), normalised as the detector will see its images: the stand-in for DETR's
    ImageNet-pretrained ResNet. Deterministic given ``seed`` (the head's initialisation and every
    batch), so detectors of one seed built on the same backbone get the same pretrained weights.
    Stops early once ``time.perf_counter()`` passes ``deadline`` (the end of --max-minutes).
    Returns the data, the steps done and asked, whether the deadline stopped it, its last batch
    accuracy and seconds."""
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Linear(model.backbone.out_channels, len(images.classes))
    opt_ = torch.optim.AdamW([*model.backbone.parameters(), *head.parameters()], lr=lr)
    acc, done = 0.0, 0
    bar = progress_bar(range(steps), steps, f"pretraining the backbone on {images.name}", progress)
    for step in bar:
        x, y = images.batch(step, batch_size)
        logits = head(model.backbone(normalize(x)).amax((2, 3)))
        loss = nn.functional.cross_entropy(logits, y)
        opt_.zero_grad(set_to_none=True)
        loss.backward()
        opt_.step()
        acc, done = float((logits.argmax(-1) == y).float().mean()), step + 1
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"loss {float(loss.detach()):.4f}  accuracy {100 * acc:.0f}%")
        if deadline is not None and time.perf_counter() > deadline:
            break
    if hasattr(bar, "close"):
        bar.close()
    return {"data": images.name, "steps": done, "asked": steps, "stopped_by_time": done < steps,
            "last_batch_accuracy": round(acc, 4), "seconds": round(time.perf_counter() - t0, 1)}


def pretraining_line(pre: dict) -> str:
    """The backbone pretraining of a run, in words, for the training log."""
    how = (f"stopped by --max-minutes after {pre['steps']} of {pre['asked']} steps" if pre.get("stopped_by_time")
           else f"{pre['steps']} steps")
    return (f"backbone pretrained on {pre.get('data', 'single-digit canvases')}: {how} in {pre['seconds']:.0f} s "
            f"(last batch accuracy {100 * pre['last_batch_accuracy']:.0f}%)")


def make_task(data: DetectData, model: nn.Module, cfg: TrainConfig) -> Detection:
    dc = data.config
    if dc.init:
        from attnlab.checkpoints import load_checkpoint

        report = load_checkpoint(model, dc.init, new_head="class_embed.")  # other classes: a fresh class head
        data.info["init"] = {k: report[k] for k in ("format", "source", "file_format", "loaded", "new_head")}
    elif dc.pretrain_backbone and model.cfg.backbone == "small" and (isinstance(data.train, DigitCanvases)
                                                                     or dc.pretrain_data):
        if "backbone_pretraining" not in data.info:  # (a resumed run loads the pretrained weights instead)
            deadline = data.budget_start + 60 * cfg.max_minutes if cfg.max_minutes else None
            images = PretrainImages(data.train.cfg if dc.pretrain_data is None else None, dc.pretrain_data,
                                    model.cfg.in_chans)
            data.info["backbone_pretraining"] = pretrain_backbone(model, images, dc.pretrain_backbone,
                                                                  default_normalization(model), seed=cfg.seed,
                                                                  deadline=deadline, progress=data.progress)
        if not dc.train_backbone:
            model.backbone.requires_grad_(False)
    data.title = f"{model.name} on {data.config.dataset.split(':')[0]}"
    pretrained = bool(dc.init) or "backbone_pretraining" in data.info  # else the backbone starts from scratch
    return Detection(data.train, data.val, data.classes, data.category_ids, default_normalization(model),
                     data.info["dataset"]["train_size"], data.config.eval_batch_size, data.info,
                     dc.backbone_lr if pretrained else 1.0,  # a backbone from scratch learns at the detector's rate
                     budget_start=data.budget_start, padded=_many_sizes(dc.dataset), val_tiles=data.val_tiles,
                     max_dets=dc.max_dets, denoising=(dc.dn_groups, dc.dn_box_noise, dc.dn_label_noise),
                     loss_names=own_losses(model))


def own_losses(model: nn.Module) -> tuple[str, ...] | None:
    """The loss terms of a detector that computes its own (RetinaNet), None for DETR (the set loss)."""
    return tuple(model.loss_names) if isinstance(model, SelfLossDetector) else None


# --- using a trained run ------------------------------------------------------------------------

def load_extras(run_dir: Path, rec: dict) -> dict:
    return {"labels": rec["labels"], "category_ids": rec["category_ids"], "normalize": Normalize(**rec["normalize"])}


def run_data_config(rec: dict) -> DetectDataConfig:
    """The data options a run was trained with (options added since take their defaults)."""
    return DetectDataConfig(**{k: v for k, v in rec["data_config"].items() if k in DetectDataConfig.__dataclass_fields__})


def evaluate(run: LoadedRun, ec: DetectEvalConfig, progress: bool = True) -> tuple[dict, dict]:
    """COCO AP, AP50, AP75, AR and the set loss on the run's validation data or a COCO or VOC
    dataset (a tiled run's: on its tiles, AP on the whole photographs)."""
    model, rec = run.model, run.record
    dc = run_data_config(rec)
    labels = run.extras["labels"]
    if ec.dataset and ec.dataset.startswith("voc:"):
        from attnlab.tasks.detect_voc import read_voc_eval

        val, val_tiles, _ = read_voc_eval(ec.dataset, dc, model.cfg, labels)
    else:  # COCO data is scored whole (read as its own validation split); canvases draw their validation set
        if ec.dataset:
            dc.dataset, dc.val_dataset = ec.dataset, (ec.dataset if ec.dataset.startswith("coco:") else None)
        data = load_data(dc, model.cfg, progress=progress, model_name=run.name)
        if data.classes != labels:
            raise DataError(f"{dc.dataset} has classes {', '.join(data.classes[:8])} but {run.name} was trained on "
                            f"{', '.join(labels[:8])}")
        val, val_tiles = data.val, data.val_tiles
    spec = ec.dataset or dc.val_dataset or dc.dataset
    max_dets = ec.max_dets or dc.max_dets
    task = Detection(val, val, labels, run.extras["category_ids"], run.extras["normalize"], len(val), ec.batch_size,
                     padded=_many_sizes(spec), val_tiles=val_tiles, max_dets=max_dets, loss_names=own_losses(model))
    t0 = time.perf_counter()
    sums = evaluation_sums(task, model, task.eval_batches(Plan()), model_device(model), progress=progress,
                           total=task.num_eval_batches())
    s = task.summarize(sums)
    seconds = time.perf_counter() - t0
    slug = spec.split(":")[0] + "-val"
    where = {"photographs": len(val_tiles.scenes), "tiles": len(val)} if val_tiles is not None else {}
    return {"slug": slug, "run_dir": str(run.run_dir), "checkpoint": rec["path"], "dataset": ec.dataset or dc.dataset,
            "images": int(sums["count"]), **where, "batch_size": ec.batch_size, "max_dets": max_dets, **s,
            "seconds": round(seconds, 3)}, {}


@torch.no_grad()
def detect_batch(run: LoadedRun, x: Tensor, sizes: list[tuple[int, int]]) -> list[dict]:
    """Detections of every query for uint8 images (B, C, H, W), boxes in the pixels of images of
    ``sizes`` (height, width)."""
    model = run.model
    out = model(run.extras["normalize"](x.to(model_device(model))))
    return postprocess(out["logits"], out["boxes"], sizes)


def detect_file(run: LoadedRun, path: str, convert: bool = False) -> dict:
    """Every detection in one image file, boxes in its pixels, as the run was trained to see it:
    tile by tile at full resolution (merged), resized as DETR (VOC and COCO runs), or squashed to
    the model's square (canvases)."""
    from attnlab.data.images import read_images

    dc = run_data_config(run.record)
    image = read_images([path], None, run.model.cfg.in_chans, convert)[0]  # (C, H, W) at full resolution
    if dc.tile:
        return predict_tiled(image, lambda t: detect_batch(run, t, [tuple(t.shape[-2:])] * len(t)), dc.tile,
                             dc.tile_overlap)
    return detect_batch(run, seen_image(run, path, convert, image)[0][None], [tuple(image.shape[-2:])])[0]


def seen_image(run: LoadedRun, path: str, convert: bool = False,
               image: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """One image file as the run's model sees it, uint8 (C, H, W), and how: a tiled run's centre
    tile at full resolution, a VOC or COCO run's photograph resized as DETR (aspect kept), a
    canvas run's squashed to the model's square. What ``viz attention`` and ``viz explore`` show.
    ``image``: the file already read at full resolution, if it is."""
    from attnlab.data.images import read_images, read_model_images
    from attnlab.tasks.detect_voc import longest_side

    dc = run_data_config(run.record)
    if not (dc.tile or _many_sizes(dc.dataset)):
        return read_model_images([path], run.model, convert)[0], "resized to the model's square, as trained"
    if image is None:
        image = read_images([path], None, run.model.cfg.in_chans, convert)[0]
    h, w = image.shape[-2:]
    if dc.tile:
        th, tw = min(dc.tile, h), min(dc.tile, w)
        y, x = (h - th) // 2, (w - tw) // 2
        return image[:, y:y + th, x:x + tw], f"the centre tile ({tw}x{th} of {w}x{h} px, at full resolution), as trained"
    shortest = int(run.model.cfg.img_size)
    x, _ = resize_keep_aspect(image, torch.zeros(0, 4), shortest, longest_side(shortest))
    return x, f"resized as DETR ({w}x{h} to {x.shape[-1]}x{x.shape[-2]} px), as trained"


def predict(run: LoadedRun, inputs: list[str], threshold: float = 0.7, convert: bool = False, **_) -> list[dict]:
    """The detections (score >= ``threshold``) of each image file, the most confident first:
    label, score, box [x0, y0, x1, y1] in the file's pixels. ``attnlab predict`` also draws
    them (:func:`attnlab.viz.detection.save_prediction_pictures`)."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold} must be a probability in [0, 1]")
    labels = run.extras["labels"]
    out = []
    for p in progress_bar(inputs, len(inputs), "detecting", len(inputs) > 1):
        d = detect_file(run, p, convert)
        order = [i for i in d["scores"].argsort(descending=True).tolist() if d["scores"][i] >= threshold]
        out.append({"image": str(p), "detections": [
            {"label": labels[int(d["labels"][i])], "index": int(d["labels"][i]), "score": round(float(d["scores"][i]), 4),
             "box": [round(float(v), 2) for v in d["boxes"][i]]} for i in order]})
    return out


SPEC = TaskSpec(
    name=TASK,
    help="object detection (DETR, or a CNN detector: RetinaNet) on digit canvases, COCO-format or Pascal VOC data",
    data_config=DetectDataConfig,
    load_data=load_data,
    make_task=make_task,
    model_kinds=(QueryDetector, SelfLossDetector),
    default_model="detr_digits",
    train_defaults={"lr": 1e-3, "batch_size": 32, "weight_decay": 1e-4, "clip_grad": 0.1, "epochs": 24,
                    "warmup_steps": 200, "min_lr": 1e-5},
    load_extras=load_extras,
    eval_config=DetectEvalConfig,
    evaluate=evaluate,
    predict=predict,
)
