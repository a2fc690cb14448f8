"""Pascal VOC detection data: one XML file per image, read into scenes at full resolution
(:class:`attnlab.detect.scene.Scene`), class names from the files.

``voc:PATH``: PATH is a folder of XML files with their images beside them (as ``neon-trees/``),
a VOC devkit folder (``Annotations/*.xml``, images in ``JPEGImages/``), or one XML file (its
image beside it). Each file names its image in ``<filename>``, may give ``<size>`` (``<width>``,
``<height>``: checked against the image; absent or 0 is not checked), and has one ``<object>``
per box: ``<name>`` and ``<bndbox>`` with ``xmin ymin xmax ymax`` in pixels. Coordinates are
taken as written, x0 = xmin and x1 = xmax, as DeepForest (whose data neon-trees is) reads them;
the VOC devkit's 1-based pixel indices would put x0, y0 one pixel further left and up (as
detectron2 reads them). ``difficult`` and ``truncated`` are not read: every box counts.

Bad input, file by file, before any image is used:

- one :class:`DataError` line naming the file: no XML files; an empty or malformed file, or one
  with a DTD (``<!DOCTYPE``: entities are never expanded); no ``<filename>``; its image missing,
  not an image or corrupt, or of another size than ``<size>``; two files naming one image; an
  object without ``<name>`` or ``<bndbox>``, or with a coordinate that is not a finite number; a
  class not among the ``classes`` asked for.
- skipped and counted: a box of zero area (xmax <= xmin or ymax <= ymin), a box wholly outside
  its image. Clipped to the image and counted: a box partly outside it. Kept and counted: a
  file without objects (an image of background only). :meth:`VocData.describe` says the counts.

Nothing is written, and nothing is unpickled.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnlab.data.canvases import DetectionSet
from attnlab.detect.boxes import torchvision_ops, xyxy_to_cxcywh
from attnlab.detect.scene import Scene
from attnlab.errors import DataError

COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class VocData:
    """The scenes of a VOC folder, in file-name order; class index i is ``classes[i]`` (COCO
    category id i + 1); ``counts`` of files, kept boxes and what was clipped or skipped."""

    scenes: list[Scene]
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def category_ids(self) -> list[int]:
        return list(range(1, len(self.classes) + 1))

    def describe(self) -> str:
        c = self.counts
        line = f"{c['files']} images, {c['boxes']} boxes of {len(self.classes)} classes"
        notes = [f"{c[k]} {what}" for k, what in (("clipped", "clipped to their image"),
                                                   ("outside", "outside their image skipped"),
                                                   ("zero_area", "of zero area skipped"),
                                                   ("without_objects", "images without objects kept")) if c[k]]
        return line + (f" ({'; '.join(notes)})" if notes else "")


def parse_spec(spec: str) -> Path:
    """``voc:PATH`` -> PATH."""
    kind, _, path = spec.partition(":")
    if kind != "voc" or not path:
        raise DataError(f"dataset {spec!r}: write voc:DIR (XML files with their images) or voc:FILE.xml")
    return Path(path).expanduser()


def annotation_files(path: Path) -> tuple[list[Path], Path]:
    """(the XML files, the folder of their images) of ``path``."""
    if path.is_file():
        return [path], path.parent
    if not path.is_dir():
        raise DataError(f"VOC data {path} does not exist")
    ann_dir, image_dir = (path / "Annotations", path / "JPEGImages") if (path / "Annotations").is_dir() else (path, path)
    files = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise DataError(f"{ann_dir} holds no .xml annotation files")
    return files, image_dir


def _parse(path: Path) -> ET.Element:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not data.strip():
        raise DataError(f"{path} is empty; a VOC annotation is an <annotation> element")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError(f"{path} has a DTD (<!DOCTYPE or <!ENTITY); VOC files have none and attnlab expands no entities")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: the root element is <{root.tag}>; a VOC annotation is an <annotation> element")
    return root


def _objects(root: ET.Element, path: Path) -> list[tuple[str, list[float]]]:
    out = []
    for i, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise DataError(f"{path}: object {i} has no {'<name>' if not name else '<bndbox>'}")
        coords = []
        for k in COORDS:
            text = box.findtext(k)
            try:
                v = float(text)
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v):
                raise DataError(f"{path}: object {i} ({name}) has <{k}> {text!r}; expected a finite number of pixels")
            coords.append(v)
        out.append((name, coords))
    return out


def _xml_size(root: ET.Element, path: Path) -> tuple[int, int] | None:
    """(width, height) from ``<size>``, None when absent or 0."""
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w is None or h is None:
        return None
    try:
        w, h = int(float(w)), int(float(h))
    except ValueError:
        raise DataError(f"{path}: <size> has width {w!r} and height {h!r}; expected whole numbers of pixels") from None
    return (w, h) if w > 0 and h > 0 else None


def read_voc(spec: str, channels: int = 3, classes: list[str] | None = None) -> VocData:
    """Read and check ``voc:PATH``. Class names are sorted, or ``classes`` in its order (to read
    validation or test data in a training run's classes)."""
    from attnlab.data.images import image_to_tensor, open_image

    files, image_dir = annotation_files(parse_spec(spec))
    parsed = []
    for path in files:
        root = _parse(path)
        filename = (root.findtext("filename") or "").strip()
        if not filename:
            raise DataError(f"{path} has no <filename> naming its image")
        parsed.append((path, root, image_dir / filename, _objects(root, path)))
    names = sorted({n for *_, objs in parsed for n, _ in objs}) if classes is None else list(classes)
    index = {n: i for i, n in enumerate(names)}
    seen: dict[Path, Path] = {}
    counts = dict.fromkeys(("files", "boxes", "clipped", "outside", "zero_area", "without_objects"), 0)
    scenes = []
    for path, root, image_path, objs in parsed:
        for i, (n, _) in enumerate(objs, 1):
            if n not in index:
                raise DataError(f"{path}: object {i} is a {n!r}, not one of the classes {', '.join(names[:10])}")
        if image_path.resolve() in seen:
            raise DataError(f"{path} and {seen[image_path.resolve()]} both name the image {image_path.name}")
        seen[image_path.resolve()] = path
        if not image_path.is_file():
            raise DataError(f"{path}: its image {image_path} does not exist")
        im = open_image(image_path)
        size = _xml_size(root, path)
        if size is not None and size != im.size:
            raise DataError(f"{path}: image {image_path.name} is {im.size[0]}x{im.size[1]} but <size> says {size[0]}x{size[1]}")
        w, h = im.size
        boxes = torch.tensor([c for _, c in objs], dtype=torch.float32).view(-1, 4)
        labels = torch.tensor([index[n] for n, _ in objs], dtype=torch.long)
        clipped = torchvision_ops().clip_boxes_to_image(boxes, (h, w))
        zero = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        outside = ~zero & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
        keep = ~zero & ~outside
        counts["files"] += 1
        counts["zero_area"] += int(zero.sum())
        counts["outside"] += int(outside.sum())
        counts["clipped"] += int((keep & (clipped != boxes).any(1)).sum())
        counts["boxes"] += int(keep.sum())
        counts["without_objects"] += int(not objs)
        scenes.append(Scene(image_to_tensor(im, None, channels), labels[keep], clipped[keep], image_path.name))
    return VocData(scenes, names, counts)


def split_by_region(scene: Scene, fraction: float) -> tuple[Scene, Scene]:
    """(training, validation) parts of one photograph: the right-most ``fraction`` of its width
    is validation (cut at column ``W - round(fraction * W)``). A box goes to the side holding its
    centre and is clipped to that side; the part of it across the cut stays in the other side's
    pixels, unlabelled."""
    h, w = scene.size
    cut = w - round(fraction * w)
    if not 0 < cut < w:
        raise DataError(f"{scene.name}: a validation strip of {fraction:g} of its {w} px width is empty or the "
                        "whole image; pick a fraction between 0 and 1 that leaves both sides at least a pixel")
    cx = (scene.boxes[:, 0] + scene.boxes[:, 2]) / 2
    return scene.crop([0, 0, cut, h], cx < cut), scene.crop([cut, 0, w, h], cx >= cut)


def detection_set(scenes: list[Scene], image_size: int | None = None, multiple: int = 1) -> DetectionSet:
    """Scenes as the detection task holds images (the structure :func:`attnlab.data.coco.read_coco`
    returns): with ``image_size``, each resized to a square (Pillow, bilinear); without it, each
    keeps its pixels, padded at the right and bottom with 0 to one size, a multiple of
    ``multiple`` (:func:`attnlab.detect.batching.pad_batch`). Boxes become
    (cx, cy, w, h) in [0, 1] of their scene, sizes each scene's (height, width) (the real pixels
    of a padded one: :func:`attnlab.detect.batching.pixel_mask` gives its mask), names the scenes'."""
    from PIL import Image

    from attnlab.data.images import image_to_tensor
    from attnlab.detect.batching import pad_batch

    if not scenes:
        raise DataError("no images to make a detection set of")
    if image_size is None:
        images = pad_batch([s.image for s in scenes], multiple)[0]
    else:
        c = scenes[0].image.shape[0]
        images = torch.stack([image_to_tensor(Image.fromarray(s.image.permute(1, 2, 0).squeeze(-1).numpy()),
                                              (image_size, image_size), c) for s in scenes])
    boxes = [xyxy_to_cxcywh(s.boxes.float()) / torch.tensor([s.size[1], s.size[0]] * 2, dtype=torch.float32) for s in scenes]
    return DetectionSet(images, [s.labels for s in scenes], boxes, [s.size for s in scenes], [s.name for s in scenes])
