"""DETR's input batches (attnlab.detect.batching): the aspect-preserving resize (against Hugging
Face's size rule), boxes scaled with it, padding to one size with a mask of the real pixels."""

import pytest
import torch

from attnlab.detect.batching import detr_batch, detr_size, pad_batch, resize_keep_aspect
from attnlab.errors import ConfigError, ShapeError


@pytest.mark.parametrize("hw, shortest, longest, out", [
    ((480, 640), 800, 1333, (800, 1066)),  # shorter side to 800, the other by the aspect ratio (truncated)
    ((640, 480), 800, 1333, (1066, 800)),
    ((1000, 250), 800, 1333, (1333, 333)),  # 800 x 3200 would pass 1333: the longer side is capped
    ((800, 600), 600, None, (800, 600)),  # already there
    ((400, 400), 512, 512, (512, 512)),
])
def test_detr_size(hw, shortest, longest, out):
    assert detr_size(*hw, shortest, longest) == out


def test_detr_size_matches_hugging_face():
    image_transforms = pytest.importorskip("transformers.image_transforms", reason="transformers is not installed")
    g = torch.Generator().manual_seed(0)
    for h, w, s in torch.randint(20, 3000, (300, 3), generator=g).tolist():
        for longest in (None, int(s * 1.667), s):
            assert detr_size(h, w, s, longest) == image_transforms.get_size_with_aspect_ratio((h, w), s, longest), (h, w, s)


def test_detr_size_refusals():
    with pytest.raises(ConfigError, match="1 <= shortest <= longest"):
        detr_size(100, 100, 800, 400)


def test_resize_scales_boxes_with_their_axis():
    image = torch.full((3, 300, 500), 77, dtype=torch.uint8)
    boxes = torch.tensor([[0., 0., 500., 300.], [100., 30., 150., 90.]])
    out, scaled = resize_keep_aspect(image, boxes, 150, 200)  # 150 x 250 passes 200: 120 x 200
    assert out.shape == (3, 120, 200) and out.dtype == torch.uint8 and (out == 77).all()
    torch.testing.assert_close(scaled, torch.tensor([[0., 0., 200., 120.], [40., 12., 60., 36.]]))
    with pytest.raises(ShapeError, match=r"one image \(C, H, W\)"):
        resize_keep_aspect(image[None], boxes, 150)


def test_pad_batch_shapes_mask_and_content():
    a = torch.randint(1, 256, (3, 20, 30), dtype=torch.uint8)
    b = torch.randint(1, 256, (3, 25, 10), dtype=torch.uint8)
    x, mask = pad_batch([a, b])
    assert x.shape == (2, 3, 25, 30) and mask.shape == (2, 25, 30) and mask.dtype == torch.bool
    assert torch.equal(x[0, :, :20, :30], a) and torch.equal(x[1, :, :25, :10], b)
    assert mask[0, :20, :30].all() and mask.sum() == 20 * 30 + 25 * 10  # True exactly on the real pixels
    assert (x[0, :, 20:] == 0).all() and (x[1, :, :, 10:] == 0).all()  # padding is 0, at the right and bottom
    with pytest.raises(ShapeError, match="one C"):
        pad_batch([a, b[:1]])


def test_detr_batch_targets_are_relative_to_each_real_image():
    small = torch.zeros(3, 100, 200, dtype=torch.uint8)
    tall = torch.zeros(3, 300, 100, dtype=torch.uint8)
    boxes = [torch.tensor([[0., 0., 200., 100.]]), torch.tensor([[25., 150., 75., 300.]])]
    labels = [torch.tensor([0]), torch.tensor([1])]
    x, mask, targets = detr_batch([small, tall], boxes, labels, shortest=50, longest=200)  # 50x100 and 150x50
    assert x.shape == (2, 3, 150, 100)
    assert mask[0].sum() == 50 * 100 and mask[1].sum() == 150 * 50
    # the whole first image is (0.5, 0.5, 1, 1) of itself, not of the padded batch
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    torch.testing.assert_close(targets[1]["boxes"], torch.tensor([[0.5, 0.75, 0.5, 0.5]]))
    assert [t["labels"].tolist() for t in targets] == [[0], [1]]
