"""COCO metrics at a chosen maxDets (attnlab.detect.coco_eval): a dense scene needs more than
COCO's 100 detections per image; the default reads what COCOeval.summarize reports."""

import contextlib
import io

import pytest
import torch

from attnlab.detect.coco_eval import coco_metrics
from attnlab.errors import ConfigError


def dense_scene(n: int = 250):
    """One 1000x1000 image with n disjoint 20x20 boxes, and perfect detections of them."""
    xy = torch.tensor([[40.0 * (i % 25), 40.0 * (i // 25)] for i in range(n)])
    boxes = torch.cat([xy, xy + 20], 1)
    gt = [{"size": (1000, 1000), "labels": torch.zeros(n, dtype=torch.long), "boxes": boxes}]
    dets = [{"scores": torch.linspace(1.0, 0.5, n), "labels": torch.zeros(n, dtype=torch.long), "boxes": boxes}]
    return gt, dets


def test_dense_scene_needs_more_than_100_detections():
    gt, dets = dense_scene(250)
    at100 = coco_metrics(gt, dets, [1])
    assert at100 == coco_metrics(gt, dets, [1], max_dets=100)  # COCO's 100 stays the default
    assert at100["AR"] == pytest.approx(100 / 250)  # only the 100 best scored count
    assert at100["AP50"] < 0.45
    assert coco_metrics(gt, dets, [1], max_dets=300) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0})
    assert coco_metrics(gt, dets, [1], max_dets=5)["AR"] == pytest.approx(5 / 250)


def test_default_reads_what_summarize_reports():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    g = torch.Generator().manual_seed(0)
    gt, dets = [], []
    for _ in range(4):
        xy = torch.rand(30, 2, generator=g) * 200
        boxes = torch.cat([xy, xy + 10 + torch.rand(30, 2, generator=g) * 40], 1)
        labels = torch.randint(0, 2, (30,), generator=g)
        gt.append({"size": (260, 260), "labels": labels, "boxes": boxes})
        noisy = boxes + torch.randn(30, 4, generator=g) * 4
        dets.append({"scores": torch.rand(30, generator=g), "labels": labels, "boxes": noisy})
    ours = coco_metrics(gt, dets, [1, 2])
    images = [{"id": i, "height": 260, "width": 260} for i in range(4)]
    anns = [{"id": len(images) * 100 + i * 30 + j + 1, "image_id": i, "category_id": int(lab) + 1, "iscrowd": 0,
             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
            for i, g_ in enumerate(gt) for j, (lab, (x0, y0, x1, y1)) in enumerate(zip(g_["labels"], g_["boxes"].tolist()))]
    res = [{"image_id": i, "category_id": int(lab) + 1, "score": float(s), "bbox": [x0, y0, x1 - x0, y1 - y0]}
           for i, d in enumerate(dets) for lab, s, (x0, y0, x1, y1) in zip(d["labels"], d["scores"], d["boxes"].tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.05 < ev.stats[0] < 0.95  # a case with something to get wrong
    assert ours == pytest.approx({"AP": ev.stats[0], "AP50": ev.stats[1], "AP75": ev.stats[2], "AR": ev.stats[8]}, abs=1e-12)


def test_max_dets_refusals():
    gt, dets = dense_scene(3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="max_dets"):
            coco_metrics(gt, dets, [1], max_dets=bad)
