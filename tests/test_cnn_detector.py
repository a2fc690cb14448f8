"""The CNN anchor of the detection comparison (issue 24): torchvision's RetinaNet on DETR's
backbone (attnlab.models.cnn_detector). It builds and declares its own loss; its training losses
are finite and differentiable; its evaluation outputs are DETR's, so DETR's postprocess reads back
torchvision's detections; its backbone is DETR's, initialised the same for a seed, and the
task's backbone pretraining trains it; a padded batch gives each image its unpadded detections
and losses; a few steps on four tiny images lower the loss."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from attnlab.detect.batching import pad_batch
from attnlab.detect.coco_eval import postprocess
from attnlab.errors import ConfigError
from attnlab.models import create_model, list_models
from attnlab.models.capabilities import SelfLossDetector
from attnlab.models.cnn_detector import NO_SCORE, RetinaNetDetector, detr_outputs, per_anchor


def two_boxes(n: int = 4, size: int = 64) -> tuple[torch.Tensor, list[dict]]:
    """``n`` greyscale images with a bright square (class 0) and a dark one (class 1) each, and
    their targets as the detection task gives them (cx, cy, w, h in [0, 1])."""
    x, targets = torch.zeros(n, 1, size, size), []
    for i in range(n):
        boxes = []
        for j, value in enumerate((1.0, -1.0)):
            s, x0, y0 = 14 + 4 * j + i, 4 + 30 * j + i, 6 + 20 * j + 2 * i
            x[i, 0, y0:y0 + s, x0:x0 + s] = value
            boxes.append([(x0 + s / 2) / size, (y0 + s / 2) / size, s / size, s / size])
        targets.append({"labels": torch.tensor([0, 1]), "boxes": torch.tensor(boxes)})
    return x, targets


def digits_model(**overrides) -> RetinaNetDetector:
    torch.manual_seed(0)
    return create_model("retinanet_digits", num_classes=2, **overrides)


def test_registered_and_declares_its_own_loss():
    assert list_models("retinanet_*") == ["retinanet_digits", "retinanet_small"]
    small = create_model("retinanet_small")
    assert isinstance(small, SelfLossDetector) and small.loss_names == ("classification", "bbox_regression")
    assert not isinstance(create_model("detr_digits"), SelfLossDetector)  # DETR's loss is the task's
    c = small.cfg
    assert (c.stride, c.detections_per_img, c.num_classes, c.in_chans) == (8, 300, 1, 3)
    assert not hasattr(small, "transform")  # torchvision's resizing transform is gone
    with pytest.raises(ConfigError, match="backbone"):
        create_model("retinanet_small", backbone="vgg")
    with pytest.raises(ConfigError, match="anchor_sizes"):
        create_model("retinanet_small", anchor_sizes=())


def test_training_losses_are_finite_and_train_every_part(one_thread):
    model = digits_model().train()
    x, targets = two_boxes(2)
    targets[1] = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}  # a tile without objects
    out = model(x, None, targets)
    assert set(out) == {"loss", "classification", "bbox_regression", "feature_size"}  # no decoding in training
    assert all(torch.isfinite(out[k]) for k in ("loss", *model.loss_names))
    torch.testing.assert_close(out["loss"], out["classification"] + out["bbox_regression"])
    out["loss"].backward()
    for part in ("backbone.", "input_proj.", "head.classification_head.", "head.regression_head."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), part
        assert any(g.abs().sum() > 0 for g in grads), part


def test_head_and_anchors_are_torchvisions(one_thread):
    """Without padding, the head read per image and the anchors are torchvision's own."""
    model = digits_model().eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        f = model.input_proj(model.backbone(x))
        cls, reg = model.head_maps(f, None)
        theirs = model.head([f])
        anchors = model.anchor_generator(ImageList(x, [(64, 48)] * 2), [f])
    for b in range(2):
        torch.testing.assert_close(per_anchor(cls[b], 2), theirs["cls_logits"][b], rtol=0, atol=0)
        torch.testing.assert_close(per_anchor(reg[b], 4), theirs["bbox_regression"][b], rtol=0, atol=0)
        torch.testing.assert_close(model.grid_anchors(f).reshape(-1, 4), anchors[b], rtol=0, atol=0)


def test_evaluation_outputs_are_detrs(one_thread):
    model = digits_model().eval()
    x, targets = two_boxes(3)
    with torch.no_grad():
        out = model(x, None, targets)  # evaluation with targets: losses and detections
    n = model.cfg.detections_per_img
    assert out["logits"].shape == (3, n, 3) and out["boxes"].shape == (3, n, 4) and out["feature_size"] == (8, 8)
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["loss"])
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= 1).all()


def test_detrs_postprocess_reads_back_the_detections():
    dets = [{"scores": torch.tensor([0.9, 0.3, 1.0]), "labels": torch.tensor([2, 0, 1]),
             "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0], [40.0, 2.0, 50.0, 12.0]])},
            {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    sizes = [(80, 50), (64, 64)]
    out = detr_outputs(dets, sizes, 5, 3)
    back = postprocess(out["logits"], out["boxes"], sizes)
    torch.testing.assert_close(back[0]["scores"][:3], dets[0]["scores"], rtol=0, atol=1e-6)
    assert back[0]["labels"][:3].tolist() == [2, 0, 1]
    torch.testing.assert_close(back[0]["boxes"][:3], dets[0]["boxes"], rtol=0, atol=1e-4)
    assert back[0]["scores"][3:].max() < 1e-30 and back[1]["scores"].max() < 1e-30  # the rows beyond: no detection
    assert out["logits"].min() == NO_SCORE


@pytest.mark.parametrize("detr_overrides, name", [({}, "retinanet_digits"),
                                                   ({"in_chans": 3, "cnn_widths": (32, 64, 128)}, "retinanet_small")])
def test_the_backbone_is_detrs_with_detrs_initialisation(detr_overrides, name):
    torch.manual_seed(0)
    d = create_model("detr_digits", **detr_overrides)
    torch.manual_seed(0)
    r = create_model(name)
    assert type(r.backbone) is type(d.backbone) and r.backbone.stride == d.backbone.stride
    ours, theirs = r.backbone.state_dict(), d.backbone.state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0, msg=k)
    torch.manual_seed(1)  # not equal by construction: another seed, other weights
    assert not torch.equal(create_model(name).backbone.body[0].weight, d.backbone.body[0].weight)


def test_the_tasks_backbone_pretraining_trains_its_backbone(one_thread):
    from attnlab.data.transforms import Normalize
    from attnlab.tasks.detect import DetectDataConfig, PretrainImages, canvas_config, pretrain_backbone

    model = digits_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pretrain_backbone(model, PretrainImages(canvas_config(DetectDataConfig(), 64)), 2, Normalize([0.0], [1.0]), batch_size=8)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("backbone.") for k in changed)  # the task's lr_scales prefix, as DETR's


@pytest.mark.parametrize("sizes", [[(40, 56), (64, 64)], [(44, 60), (37, 29)]])  # stride multiples, and not
def test_a_padded_image_gives_the_unpadded_detections_and_losses(sizes, one_thread):
    model = digits_model(score_thresh=0.0).eval()
    with torch.no_grad():  # GroupNorm's affine away from 1 and 0, so that wrong statistics would show
        for n, p in model.backbone.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape) * 0.5 + (1.0 if n.endswith("weight") else 0.0))
        for p in model.head.parameters():  # scores spread out (at initialisation all are ~0.01: ties reorder them)
            p.copy_(torch.randn(p.shape) * 0.1)
    images = [torch.randn(1, h, w) for h, w in sizes]
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.4, 0.3, 0.2]])},
               {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.4, 0.5], [0.7, 0.6, 0.2, 0.2]])}]
    x, mask = pad_batch(images, multiple=8)
    with torch.no_grad():
        batch = model(x, mask, targets)
        alone = [model(im[None], None, [t]) for im, t in zip(images, targets)]
    for i, one in enumerate(alone):
        ours = postprocess(batch["logits"][i:i + 1], batch["boxes"][i:i + 1], [sizes[i]])[0]
        theirs = postprocess(one["logits"], one["boxes"], [sizes[i]])[0]
        assert ours["labels"].tolist() == theirs["labels"].tolist()
        torch.testing.assert_close(ours["scores"], theirs["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=1e-2, rtol=0)  # pixels: 1e-4 of 64
    for k in model.loss_names:
        torch.testing.assert_close(batch[k], sum(one[k] for one in alone) / 2, atol=1e-4, rtol=0)


def test_a_few_steps_on_four_images_lower_the_loss(one_thread):
    model = digits_model().train()
    x, targets = two_boxes(4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = model(x, None, targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], losses


def test_the_detect_task_trains_evaluates_and_predicts_with_it(tmp_path, one_thread, capsys):
    """The same engine, data and evaluation as DETR: `attnlab train detect --model retinanet_digits` logs the
    detector's own losses, `eval` scores it with the COCO evaluator, `predict` draws its boxes; DN-DETR's
    denoising is refused for it in one line."""
    import json

    from PIL import Image

    from attnlab.cli.main import main
    from attnlab.data.canvases import CanvasConfig, make_canvases

    run = tmp_path / "run"
    small = ["--model-arg", "cnn_widths=[16,32]", "--model-arg", "img_size=32", "--model-arg", "head_dim=16",
             "--train-size", "32", "--val-size", "16", "--batch-size", "16", "--epochs", "1", "--min-scale", "10",
             "--max-scale", "16", "--pretrain-backbone", "3", "--threads", "1", "--quiet"]
    assert main(["train", "detect", "--model", "retinanet_digits", *small, "--run-dir", str(run)]) == 0
    row = json.loads((run / "metrics.json").read_text())["epochs"][-1]
    assert {"val_AP50", "val_loss", "val_classification", "val_bbox_regression"} <= set(row)
    assert row["val_loss"] == pytest.approx(row["val_classification"] + row["val_bbox_regression"], rel=1e-4)
    assert json.loads((run / "last.json").read_text())["backbone_pretraining"]["steps"] == 3  # the same as DETR's
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["AP50"] == pytest.approx(row["val_AP50"])
    img = tmp_path / "canvas.png"
    Image.fromarray(make_canvases(CanvasConfig(size=32, min_scale=10, max_scale=16), 1, seed=5).images[0, 0].numpy()).save(img)
    assert main(["predict", str(run), str(img), "--threshold", "0", "--json", "--output-dir", str(tmp_path)]) == 0
    pred = json.loads(capsys.readouterr().out)[0]
    assert all(len(d["box"]) == 4 and 0 <= d["score"] <= 1 for d in pred["detections"])
    assert main(["train", "detect", "--model", "retinanet_digits", *small, "--dn-groups", "2",
                 "--run-dir", str(tmp_path / "dn")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_pretraining_on_an_image_dataset_gives_both_detectors_one_backbone(one_thread):
    """--pretrain-data: the backbone first classifies an image dataset's images, normalised as the detector's;
    DETR and RetinaNet of one seed, built on the same backbone, come out of it with the same weights (the head and
    every batch depend on the seed alone), and a dataset of other channels is refused."""
    from attnlab.data.transforms import default_normalization
    from attnlab.tasks.detect import PretrainImages, pretrain_backbone

    images = PretrainImages(spec="digits", channels=1)
    assert images.name == "digits" and len(images.classes) == 10
    backbones = []
    for name in ("detr_digits", "retinanet_digits"):
        torch.manual_seed(3)
        model = create_model(name)
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        pre = pretrain_backbone(model, images, 3, default_normalization(model), seed=3, batch_size=8)
        assert pre["data"] == "digits" and pre["steps"] == 3
        assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
        backbones.append(model.backbone.state_dict())
    for k, v in backbones[0].items():
        torch.testing.assert_close(backbones[1][k], v, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="3-channel backbone"):
        PretrainImages(spec="digits", channels=3)
