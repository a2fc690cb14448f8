"""Pascal VOC data for the detection task (``--dataset voc:PATH``): photographs read at full
resolution (:mod:`attnlab.data.voc`), shown to DETR in one of two views:

- tiled (``--tile S --tile-overlap O``): windows of S x S pixels at full resolution
  (:mod:`attnlab.detect.tiles`); validation and evaluation predict tile by tile and score each
  photograph whole, its tiles' detections merged;
- whole: each photograph resized as DETR resizes (shorter side the model's ``img_size``, longer
  side at most 1333/800 of it; :func:`attnlab.detect.batching.resize_keep_aspect`).

Either way images of other sizes are padded at the right and bottom to a multiple of the
backbone's stride, with a pixel mask. Validation: ``--val-dataset voc:PATH``, or else the
right-most ``--val-region`` of each training photograph (:func:`attnlab.data.voc.split_by_region`).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnlab.data.canvases import DetectionSet
from attnlab.data.voc import VocData, detection_set, read_voc, split_by_region
from attnlab.detect.batching import resize_keep_aspect
from attnlab.detect.scene import Scene
from attnlab.detect.tiles import TiledScenes, tile_scenes

LONGER_PER_SHORTER = 1333 / 800  # DETR's resize: shorter side 800, longer at most 1333


@dataclass
class VocSets:
    """A VOC run's data: training images, validation images (tiles or resized photographs) and,
    when tiled, the validation photographs they were cut from."""

    train: DetectionSet
    val: DetectionSet
    val_tiles: TiledScenes | None
    classes: list[str]
    line: str  # what was read, for the training log


def longest_side(shortest: int) -> int:
    return round(shortest * LONGER_PER_SHORTER)


def model_view(scenes: list[Scene], dc, mcfg) -> tuple[DetectionSet, TiledScenes | None]:
    """The images DETR is shown for ``scenes``: their tiles (and the tiling), or each resized."""
    if dc.tile:
        tiled = tile_scenes(scenes, dc.tile, dc.tile_overlap)
        return detection_set(tiled.tiles, multiple=mcfg.stride), tiled
    resized = []
    for s in scenes:
        image, boxes = resize_keep_aspect(s.image, s.boxes, int(mcfg.img_size), longest_side(int(mcfg.img_size)))
        resized.append(Scene(image, s.labels, boxes, s.name, s.origin))
    return detection_set(resized, multiple=mcfg.stride), None


def read_voc_sets(dc, mcfg) -> VocSets:
    """``dc.dataset`` (and ``dc.val_dataset``) read, split and shown to the model as ``dc`` says."""
    data = read_voc(dc.dataset, int(mcfg.in_chans))
    if dc.val_dataset:
        val_data = read_voc(dc.val_dataset, int(mcfg.in_chans), classes=data.classes)
        train_scenes, val_scenes = data.scenes, val_data.scenes
        where = f"validation {dc.val_dataset}: {val_data.describe()}"
    else:
        parts = [split_by_region(s, dc.val_region) for s in data.scenes]
        train_scenes, val_scenes = [t for t, _ in parts], [v for _, v in parts]
        where = f"validation: the right-most {dc.val_region:g} of each photograph"
    train, _ = model_view(train_scenes, dc, mcfg)
    val, val_tiles = model_view(val_scenes, dc, mcfg)
    return VocSets(train, val, val_tiles, data.classes, f"{dc.dataset}: {data.describe()}; {where}; " + view_line(dc, train))


def view_line(dc, ds: DetectionSet) -> str:
    """How the training images were made, with the most objects any of them holds (DETR needs at
    least that many queries)."""
    most = max((len(b) for b in ds.boxes), default=0)
    how = (f"{len(ds):,} tiles of {dc.tile} px (overlap {dc.tile_overlap} px)" if dc.tile
           else f"{len(ds):,} photographs resized as DETR (padded to {ds.images.shape[-2]}x{ds.images.shape[-1]})")
    return f"training on {how}, at most {most} objects in one"


def read_voc_eval(spec: str, dc, mcfg, classes: list[str]) -> tuple[DetectionSet, TiledScenes | None, VocData]:
    """Another VOC dataset scored whole, in a run's classes and view."""
    data = read_voc(spec, int(mcfg.in_chans), classes=classes)
    return *model_view(data.scenes, dc, mcfg), data
