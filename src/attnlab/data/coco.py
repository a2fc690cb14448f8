"""COCO-format detection data: an annotation JSON (``images``, ``annotations``, ``categories``;
boxes ``[x, y, w, h]`` in pixels) and a folder of the images it names.

Everything is checked before anything is used; the first problem is one :class:`DataError` line
naming the file and the entry: malformed JSON, a missing field, an image file that is missing
or unreadable or whose size differs from the JSON's, an annotation of an unknown image or
category id, a NaN or infinite box coordinate, a zero-area box, a box outside its image.
Crowd annotations (``iscrowd: 1``) are skipped, as DETR's training does.

Each image is resized as DETR resizes, its aspect ratio kept (shorter side ``image_size``,
longer side at most ``longest``: :func:`attnlab.detect.batching.resize_keep_aspect`), and the set
is padded at the right and bottom with 0 as Pascal VOC photographs are
(:func:`attnlab.data.voc.detection_set`): each image's size is its real pixels, which
:func:`attnlab.detect.batching.pixel_mask` masks, and its boxes (cx, cy, w, h) are divided by that
size (as DETR's targets), so they are the same fractions of the original image. Metrics are then
computed in the resized pixels; COCO's AP and AR over all areas are those of the original pixels,
since scaling each axis leaves every IoU unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from attnlab.data.canvases import DetectionSet
from attnlab.data.voc import detection_set
from attnlab.detect.batching import resize_keep_aspect
from attnlab.detect.boxes import xywh_to_xyxy
from attnlab.detect.scene import Scene
from attnlab.errors import DataError

SLACK = 1e-3  # pixels a box may pass its image's edge (float rounding in exported JSON)


def parse_spec(spec: str) -> tuple[Path, Path]:
    """``coco:ANNOTATIONS:IMAGES`` -> (annotation file, image folder)."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "coco" or not parts[1] or not parts[2]:
        raise DataError(f"dataset {spec!r}: write coco:ANNOTATIONS.json:IMAGE_DIR")
    return Path(parts[1]).expanduser(), Path(parts[2]).expanduser()


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"COCO annotations {path} do not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file is a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: no {key!r} list (a COCO file has images, annotations and categories)")
    return data


def _field(entry, key: str, kind, path: Path, what: str):
    if not isinstance(entry, dict) or key not in entry or not isinstance(entry[key], kind) or isinstance(entry[key], bool):
        raise DataError(f"{path}: {what} has no valid {key!r}: {str(entry)[:120]}")
    return entry[key]


def read_coco(spec: str, image_size: int, channels: int, longest: int | None = None,
              multiple: int = 1) -> tuple[DetectionSet, list[int], list[str]]:
    """Read and check ``coco:ANNOTATIONS:IMAGES``: (the set, category ids, category names), class
    index i being category ``ids[i]`` (ids sorted). Each image is resized to shorter side
    ``image_size``, longer side at most ``longest``, and the set padded to a multiple of
    ``multiple`` (a backbone's stride)."""
    from attnlab.data.images import image_to_tensor, open_image

    ann_path, root = parse_spec(spec)
    data = _load_json(ann_path)
    if not root.is_dir():
        raise DataError(f"COCO image folder {root} does not exist")
    cats = {}
    for c in data["categories"]:
        cats[_field(c, "id", int, ann_path, "a category")] = str(c.get("name", c["id"]))
    if not cats:
        raise DataError(f"{ann_path}: no categories")
    ids = sorted(cats)
    index = {cid: i for i, cid in enumerate(ids)}
    images = {}
    for im in data["images"]:
        iid = _field(im, "id", int, ann_path, "an image")
        name = _field(im, "file_name", str, ann_path, f"image {iid}")
        w, h = _field(im, "width", int, ann_path, f"image {iid}"), _field(im, "height", int, ann_path, f"image {iid}")
        images[iid] = (name, w, h)
    if not images:
        raise DataError(f"{ann_path}: no images")
    objects: dict[int, list] = {iid: [] for iid in images}
    for a in data["annotations"]:
        aid = a.get("id", "?") if isinstance(a, dict) else "?"
        iid = _field(a, "image_id", int, ann_path, f"annotation {aid}")
        cid = _field(a, "category_id", int, ann_path, f"annotation {aid}")
        box = _field(a, "bbox", list, ann_path, f"annotation {aid}")
        if iid not in images:
            raise DataError(f"{ann_path}: annotation {aid} is for image id {iid}, which is not in 'images'")
        if cid not in index:
            raise DataError(f"{ann_path}: annotation {aid} has unknown category id {cid} (categories: "
                            f"{', '.join(map(str, ids[:10]))}{', ...' if len(ids) > 10 else ''})")
        if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise DataError(f"{ann_path}: annotation {aid} has bbox {box}; expected [x, y, width, height]")
        if a.get("iscrowd", 0):
            continue
        x, y, bw, bh = (float(v) for v in box)
        name, w, h = images[iid]
        if not all(math.isfinite(v) for v in (x, y, bw, bh)):
            raise DataError(f"{ann_path}: annotation {aid} has bbox {box} with a coordinate that is not a finite number")
        if bw <= 0 or bh <= 0:
            raise DataError(f"{ann_path}: annotation {aid} has a zero-area box {box} (width and height must be > 0)")
        if x < -SLACK or y < -SLACK or x + bw > w + SLACK or y + bh > h + SLACK:
            raise DataError(f"{ann_path}: annotation {aid} has box {box} outside its image {name} ({w}x{h})")
        objects[iid].append((index[cid], x, y, bw, bh))
    scenes = []
    for iid, (name, w, h) in images.items():
        path = root / name
        if not path.is_file():
            raise DataError(f"{ann_path}: image {iid} is {path}, which does not exist")
        im = open_image(path)
        if im.size != (w, h):
            raise DataError(f"{ann_path}: image {name} is {im.size[0]}x{im.size[1]} but the JSON says {w}x{h}")
        xyxy = xywh_to_xyxy(torch.tensor([o[1:] for o in objects[iid]], dtype=torch.float32).view(-1, 4))  # pixels
        image, xyxy = resize_keep_aspect(image_to_tensor(im, None, channels), xyxy, image_size, longest)
        scenes.append(Scene(image, torch.tensor([o[0] for o in objects[iid]], dtype=torch.long), xyxy, name))
    return detection_set(scenes, multiple=multiple), ids, [cats[i] for i in ids]
