"""Detection data: digit canvases (deterministic, exact boxes) and the COCO reader's refusals."""

import pytest
import torch

from attnlab.data.canvases import CanvasConfig, DigitCanvases, make_canvases
from attnlab.errors import DataError


def test_canvases_are_deterministic_per_seed():
    cfg = CanvasConfig()
    a, b = make_canvases(cfg, 8, seed=3), make_canvases(cfg, 8, seed=3)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert all(torch.equal(x, y) for x, y in zip(a.labels, b.labels))
    c = make_canvases(cfg, 8, seed=4)
    assert not torch.equal(a.images, c.images)
    # canvas i does not depend on how many were drawn before it
    assert torch.equal(DigitCanvases(cfg, seed=3).draw(5)[0], a.images[5])
    # validation canvases come from other digits
    assert not torch.equal(make_canvases(cfg, 8, seed=3, split="val").images, a.images)


def test_boxes_tightly_enclose_the_digit_pixels():
    cfg = CanvasConfig(size=64, min_digits=1, max_digits=4)
    ds = make_canvases(cfg, 60, seed=0)
    counts = [len(lb) for lb in ds.labels]
    assert min(counts) >= 1 and max(counts) >= 3 and max(counts) <= 4
    for img, lab, box in zip(ds.images, ds.labels, ds.boxes):
        on = img[0] > 0
        covered = torch.zeros_like(on)
        assert ((lab >= 0) & (lab < 10)).all()
        for cx, cy, w, h in (box * cfg.size).tolist():
            x0, y0, x1, y1 = round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)
            assert 0 <= x0 < x1 <= cfg.size and 0 <= y0 < y1 <= cfg.size
            inside = on[y0:y1, x0:x1]
            # tight: every border row and column of the box holds a digit pixel
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert not covered[y0:y1, x0:x1].any()  # boxes never overlap
            covered[y0:y1, x0:x1] = True
        assert not (on & ~covered).any()  # every digit pixel is in a box


def test_canvas_config_refusals():
    with pytest.raises(DataError, match="min_digits"):
        CanvasConfig(min_digits=3, max_digits=2)
    with pytest.raises(DataError, match="scale"):
        CanvasConfig(size=32, max_scale=40)
    with pytest.raises(DataError, match="canvas source"):
        CanvasConfig(source="cifar10")
