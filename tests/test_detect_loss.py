"""Boxes and GIoU against torchvision.ops, the Hungarian matcher against brute force, the set loss
against Hugging Face DETR's loss (1e-5), and one batch overfit."""

import itertools

import numpy as np
import pytest
import torch

from attnlab.detect.boxes import box_iou, cxcywh_to_xyxy, generalized_box_iou, xywh_to_xyxy, xyxy_to_cxcywh, xyxy_to_xywh
from attnlab.detect.loss import set_loss
from attnlab.detect.matcher import assign
from attnlab.models import create_model


def random_xyxy(n, g):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.8 + 0.01
    return torch.cat([xy, xy + wh], dim=1)


def test_boxes_against_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(0)
    a, b = random_xyxy(50, g), random_xyxy(40, g)
    torch.testing.assert_close(xyxy_to_cxcywh(a), ops.box_convert(a, "xyxy", "cxcywh"))
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(a)), a)
    torch.testing.assert_close(xyxy_to_xywh(a), ops.box_convert(a, "xyxy", "xywh"))
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(a)), a)
    torch.testing.assert_close(box_iou(a, b)[0], ops.box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), ops.generalized_box_iou(a, b))
    # disjoint boxes: GIoU < 0; identical: 1
    assert generalized_box_iou(a[:1], a[:1]).item() == pytest.approx(1.0)
    far = torch.tensor([[0.0, 0.0, 0.1, 0.1]], dtype=torch.float64)
    assert generalized_box_iou(far, far + 0.5).item() < 0


def test_matcher_is_optimal_on_1000_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(1000):
        n = int(rng.integers(1, 7))
        m = int(rng.integers(1, n + 1))
        c = torch.from_numpy(rng.normal(size=(n, m)))
        rows, cols = assign(c)
        assert len(rows) == m and len(set(rows.tolist())) == m and sorted(cols.tolist()) == list(range(m))
        best = min(sum(c[p[j], j].item() for j in range(m)) for p in itertools.permutations(range(n), m))
        assert c[rows, cols].sum().item() == pytest.approx(best, abs=1e-9)


def targets_for(b, g, k=3):
    out = []
    for i in range(b):
        m = 1 + i % 3
        xyxy = random_xyxy(m, g).float().clamp(0, 1)
        out.append({"labels": torch.randint(0, k, (m,), generator=g), "boxes": xyxy_to_cxcywh(xyxy)})
    return out


def hf_labels(targets):
    return [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


@pytest.mark.slow
def test_loss_equals_hugging_face(one_thread):
    """Last-layer loss through HF's own model with the same weights; the auxiliary sum through
    HF's loss function on our outputs (HF's model with auxiliary_loss=True computes another
    function, see checkpoints/detr.hf_config)."""
    from attnlab.checkpoints import detr as D
    from attnlab.checkpoints import load_checkpoint
    from test_detr import hf_tiny

    transformers_loss = pytest.importorskip("transformers.loss.loss_for_object_detection")
    hf = hf_tiny(aux=False)
    ours = create_model("detr_resnet50", **{**D.config_from_hf(hf.config.to_dict()), "aux_loss": False}).eval()
    load_checkpoint(ours, hf.state_dict())
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 64, 96, generator=g)
    targets = targets_for(3, g)
    with torch.no_grad():
        h = hf(pixel_values=x, labels=hf_labels(targets))
        mine = set_loss(ours(x), targets)["loss"]
    assert abs(h.loss.item() - mine.item()) < 1e-5
    assert h.loss.item() > 1.0  # a loss that is not trivially small

    aux = create_model("detr_resnet50", **{**D.config_from_hf(hf.config.to_dict()), "aux_loss": True}).eval()
    load_checkpoint(aux, hf.state_dict())
    with torch.no_grad():
        out = aux(x)
        classes = torch.stack([a["logits"] for a in out["aux"]] + [out["logits"]])
        coords = torch.stack([a["boxes"] for a in out["aux"]] + [out["boxes"]])
        hf.config.auxiliary_loss = True
        loss, parts, _ = transformers_loss.ForObjectDetectionLoss(out["logits"], hf_labels(targets), "cpu", out["boxes"],
                                                                  hf.config, classes, coords)
    assert "loss_ce_0" in parts
    assert abs(loss.item() - set_loss(out, targets)["loss"].item()) < 1e-5


def test_loss_without_objects_trains_no_object():
    logits = torch.zeros(2, 4, 4, requires_grad=True)
    boxes = torch.full((2, 4, 4), 0.5)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    loss = set_loss({"logits": logits, "boxes": boxes}, empty)["loss"]
    loss.backward()
    assert loss.item() == pytest.approx(np.log(4))
    assert (logits.grad[..., 3] < 0).all()  # pushes every query towards "no object"


def test_one_batch_overfits(one_thread):
    """A tiny DETR drives the loss of one batch of canvases under 10% of its start in 150 steps."""
    from attnlab.data.canvases import CanvasConfig, make_canvases

    torch.manual_seed(0)
    ds = make_canvases(CanvasConfig(size=32, min_digits=1, max_digits=2, min_scale=10, max_scale=16), 4, seed=0)
    model = create_model("detr_digits", d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, d_ff=64,
                         num_queries=4, cnn_widths=(16, 32))
    x = ds.images.float() / 255
    targets = ds.targets()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(150):
        loss = set_loss(model(x), targets)["loss"]
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())
