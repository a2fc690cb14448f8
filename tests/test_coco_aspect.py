"""COCO-format data through the detection task as DETR sees it: each image resized with its aspect
ratio kept (shorter side img_size, longer side at most 1333/800 of it), padded at the right and
bottom to the backbone's stride with a pixel mask, boxes relative to the image's own resized size;
a padded image gives its detections alone; predict resizes a file the same way."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.detect.boxes import cxcywh_to_xyxy, xyxy_to_xywh
from test_detr_padding import TOL, small_detr

pytestmark = pytest.mark.usefixtures("one_thread")

# (width, height) -> (height, width) at shorter side 64, longer at most round(64 * 1333 / 800) = 107:
# 90x45 would be 64x128, so its long side is capped (short side 53.5 -> 54); 48x64 is 85x64 (85.3 truncated)
PHOTOS = {"wide.png": ((90, 45), (54, 107)), "tall.png": ((48, 64), (85, 64))}
PADDED = (88, 112)  # the largest height and width, up to multiples of the stride 8
OBJECTS = {"wide.png": [(1, [3.25, 4.5, 20.75, 10.125]), (2, [60.5, 0.0, 29.5, 45.0])],  # (category, x y w h)
           "tall.png": [(1, [0.0, 10.75, 47.5, 30.25])]}


def write_coco(root):
    """Two images of noise of other aspect ratios, their boxes with fractional pixels."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (name, ((w, h), _)) in enumerate(PHOTOS.items(), 1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for c, box in OBJECTS[name]:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": box, "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "ann.json").write_text(json.dumps(data))
    return f"coco:{root / 'ann.json'}:{root}"


def coco_task(spec, model):
    """The data and task a run on ``spec`` trains on, the images in the JSON's order."""
    from attnlab.tasks.detect import DetectDataConfig, load_data, make_task
    from attnlab.train.config import TrainConfig

    data = load_data(DetectDataConfig(dataset=spec, val_dataset=spec), model.cfg, progress=False)
    return data.train, make_task(data, model, TrainConfig())


def test_images_keep_their_aspect_and_the_mask_marks_the_padding(tmp_path):
    from attnlab.detect.batching import resize_keep_aspect

    model = small_detr()
    assert model.cfg.img_size == 64 and model.backbone.stride == 8
    ds, task = coco_task(write_coco(tmp_path), model)
    sizes = [hw for _, hw in PHOTOS.values()]
    assert ds.images.shape == (2, 3, *PADDED) and ds.sizes == sizes and ds.names == list(PHOTOS)
    mask = task.mask(ds, torch.tensor([0, 1]))
    x = task.inputs(ds.images, mask)
    for i, (name, (h, w)) in enumerate(zip(PHOTOS, sizes)):
        real = torch.zeros(PADDED, dtype=torch.bool)
        real[:h, :w] = True
        assert torch.equal(mask[i], real)  # False exactly on the padding
        assert (ds.images[i][:, ~real] == 0).all() and (x[i][:, ~real] == 0).all() and (x[i][:, real] != 0).any()
        whole = torch.from_numpy(np.array(Image.open(tmp_path / name))).permute(2, 0, 1)
        resized, _ = resize_keep_aspect(whole, torch.zeros(0, 4), 64, 107)
        assert torch.equal(ds.images[i, :, :h, :w], resized)  # the whole picture, not a squashed or cropped one


def test_boxes_map_back_to_the_json(tmp_path):
    ds, _ = coco_task(write_coco(tmp_path), small_detr())
    for i, (name, ((w, h), _)) in enumerate(PHOTOS.items()):
        assert ds.labels[i].tolist() == [c - 1 for c, _ in OBJECTS[name]]
        pixels = xyxy_to_xywh(cxcywh_to_xyxy(ds.boxes[i]) * torch.tensor([w, h, w, h]))  # the original image's
        torch.testing.assert_close(pixels, torch.tensor([box for _, box in OBJECTS[name]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("cross_attention", ["dense", "deformable"])
def test_a_padded_coco_image_gives_its_detections_alone(tmp_path, cross_attention):
    """tests/test_detr_padding.py's check, on the batch the task builds from COCO data."""
    model = small_detr(cross_attention)
    ds, task = coco_task(write_coco(tmp_path), model)
    ids = torch.tensor([0, 1])
    mask = task.mask(ds, ids)
    assert mask is not None and not mask.all()
    with torch.no_grad():
        batch = model(task.inputs(ds.images[ids], mask), mask)
        for i, (h, w) in enumerate(ds.sizes):
            alone = model(task.inputs(ds.images[i:i + 1, :, :h, :w], None))
            torch.testing.assert_close(batch["logits"][i], alone["logits"][0], atol=TOL, rtol=0)
            torch.testing.assert_close(batch["boxes"][i], alone["boxes"][0], atol=TOL, rtol=0)


def test_predict_on_a_coco_run_resizes_as_detr(tmp_path):
    """A file is shown to the model as its training image was: its detections are those of the
    image in the training set, in the file's pixels."""
    from attnlab.data.transforms import default_normalization
    from attnlab.detect.coco_eval import postprocess
    from attnlab.tasks.detect import detect_file

    model = small_detr()
    spec = write_coco(tmp_path)
    ds, task = coco_task(spec, model)
    run = SimpleNamespace(model=model, record={"data_config": {"dataset": spec}},
                          extras={"normalize": default_normalization(model)})
    for i, (name, ((w, h), (rh, rw))) in enumerate(PHOTOS.items()):
        with torch.no_grad():
            seen = model(task.inputs(ds.images[i:i + 1, :, :rh, :rw], None))
        want = postprocess(seen["logits"], seen["boxes"], [(h, w)])[0]
        got = detect_file(run, str(tmp_path / name))
        torch.testing.assert_close(got["scores"], want["scores"], atol=TOL, rtol=0)
        torch.testing.assert_close(got["boxes"], want["boxes"], atol=TOL * max(w, h), rtol=0)


def test_metrics_in_resized_pixels_are_those_in_the_original():
    """The task scores a COCO set in its resized pixels; AP and AR over all areas do not change when
    each axis is scaled, since every IoU stays the same."""
    from attnlab.detect.coco_eval import coco_metrics

    g = torch.Generator().manual_seed(0)

    def boxes(n, w, h):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 1], 1)

    gts, dets, resized_gts, resized_dets = [], [], [], []
    for (w, h), (rh, rw) in PHOTOS.values():
        truth = boxes(6, w, h)
        found = torch.cat([truth + torch.randn(6, 4, generator=g) * 2, boxes(2, w, h)])
        scores, scale = torch.rand(8, generator=g), torch.tensor([rw / w, rh / h] * 2)
        gts.append({"size": (h, w), "labels": torch.arange(6) % 2, "boxes": truth})
        dets.append({"scores": scores, "labels": torch.arange(8) % 2, "boxes": found})
        resized_gts.append({**gts[-1], "size": (rh, rw), "boxes": truth * scale})
        resized_dets.append({**dets[-1], "boxes": found * scale})
    original, resized = coco_metrics(gts, dets, [1, 2]), coco_metrics(resized_gts, resized_dets, [1, 2])
    assert 0.05 < original["AP"] < 0.95
    assert resized == pytest.approx(original, abs=1e-9)
