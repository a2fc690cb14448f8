"""timm's model contract, as its own tests state it (tests/test_models.py of
huggingface/pytorch-image-models: test_model_default_cfgs_non_std, test_model_backward,
test_model_forward_intermediates, test_model_forward_intermediates_features), written again for
every registered Vision Transformer; then the same calls side by side with timm itself on
identical weights, and create_model's pretrained / checkpoint_path / features_only.

Models of up to 384 channels run for real with 3 blocks; the wider ones (ViT-B, -L, -H) are
built on the meta device, where only shapes are checked."""

from __future__ import annotations

import math

import pytest
import torch

import attnlab
from attnlab.errors import CheckpointError, ConfigError, UnsupportedError
from attnlab.io import UNTRUSTED_PICKLE
from attnlab.models import VisionTransformer, list_models
from attnlab.models.features import FeatureMaps
from attnlab.models.registry import probe_model

timm = pytest.importorskip("timm")

VITS = [n for n in list_models() if isinstance(probe_model(n), VisionTransformer)]
TIMM_NAMES = [n for n in VITS if timm.is_model(n)]
DEPTH = 3  # timm asks for at least three feature levels


def device_for(name: str) -> torch.device:
    return torch.device("cpu" if probe_model(name).embed_dim <= 384 else "meta")


def build(name: str, **kw):
    torch.manual_seed(0)
    with device_for(name):
        return attnlab.create_model(name, depth=DEPTH, **kw).eval()


def images(model, batch: int = 1) -> torch.Tensor:
    with next(model.parameters()).device:
        return torch.randn(batch, *model.default_cfg["input_size"])


def finite(t: torch.Tensor) -> bool:
    return t.is_meta or bool(torch.isfinite(t).all())


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.is_meta or torch.allclose(a, b, rtol=1e-4, atol=1e-5))


# ---------------------------------------------------------------------- every registered ViT
@pytest.mark.parametrize("name", VITS)
def test_default_cfg_head_and_classifier_reset(name):
    """test_model_default_cfgs_non_std: sizes, pre-logits, reset_classifier(0), num_classes=0,
    and the classifier and first conv the config names are real parameters."""
    model = build(name)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg, keys = model.default_cfg, model.state_dict()
    assert cfg == model.pretrained_cfg and cfg["num_classes"] == model.num_classes
    x = images(model)
    feats = model.forward_features(x)  # (B, N, C)
    pre = model.forward_head(feats, pre_logits=True)  # (B, C)
    assert feats.shape[-1] == model.num_features and pre.shape[1] == model.head_hidden_size
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.default_cfg["num_classes"] == 0
    out = model(x)
    assert out.shape == pre.shape and close(out, pre)
    assert build(name, num_classes=0)(x).shape[-1] == model.num_features
    assert f"{cfg['classifier']}.weight" in keys and f"{cfg['first_conv']}.weight" in keys


@pytest.mark.parametrize("name", VITS)
def test_no_pooling_returns_every_token(name):
    """reset_classifier(0, '') and create_model(num_classes=0, global_pool=''): forward is
    forward_features, every token (B, N, C)."""
    model = build(name)
    x = images(model)
    model.reset_classifier(0, "")
    assert model.global_pool == "" and model.cfg.global_pool == ""
    assert close(model(x), model.forward_features(x))
    fresh = build(name, num_classes=0, global_pool="")
    n = model.num_prefix_tokens + math.prod(model.grid_size)
    assert fresh(x).shape == (1, n, model.num_features)
    assert set(fresh.state_dict()) == set(model.state_dict())  # the same layout as the config builds


@pytest.mark.parametrize("name", VITS)
def test_forward_intermediates(name):
    """test_model_forward_intermediates: every block a level of timm's FeatureInfo; NCHW maps
    no larger than the image over the reduction; the final output is forward_features."""
    model = build(name)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))  # timm's own checks of the dicts
    channels, reduction = info.channels(), info.reduction()
    assert len(channels) == DEPTH
    x = images(model)
    final, maps = model.forward_intermediates(x, output_fmt="NCHW")
    assert len(maps) == len(channels)
    for c, r, m in zip(channels, reduction, maps):
        assert m.shape[:2] == (1, c) and finite(m)
        assert m.shape[2] <= math.ceil(x.shape[2] / r) + 1 and m.shape[3] <= math.ceil(x.shape[3] / r) + 1
    assert close(final, model.forward_features(x))
    nlc = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)  # (B, Gh*Gw, C)
    assert all(close(a, b.flatten(2).transpose(1, 2)) for a, b in zip(nlc, maps))


@pytest.mark.parametrize("name", VITS)
def test_features_only(name):
    """test_model_forward_intermediates_features: features_only=True (timm's 'getter') gives
    one map per out_index with the channels and reduction of its feature_info."""
    model = build(name, features_only=True, feature_cls="getter")
    assert isinstance(model, FeatureMaps) and model.output_fmt == "NCHW"
    channels, reduction = model.feature_info.channels(), model.feature_info.reduction()
    assert model.feature_info.out_indices == model.out_indices == tuple(range(DEPTH - 3, DEPTH))
    assert model.feature_info.module_name() == [f"blocks.{i}" for i in model.out_indices]
    x = images(model.model)
    outs = model(x)
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reduction, outs):
        assert o.shape == (1, c, x.shape[2] // r, x.shape[3] // r) and finite(o)
    # trimmed as timm's getter: no classifier, no final norm, nothing after the last block taken
    keys = set(model.state_dict())
    assert not any(k.startswith(("model.head.", "model.norm.", "model.fc_norm.")) for k in keys)


@pytest.mark.parametrize("name", [n for n in VITS if device_for(n).type == "cpu"])
def test_backward_reaches_every_parameter(name):
    """test_model_backward: num_classes=42, train mode, every parameter gets a gradient."""
    model = build(name, num_classes=42).train()
    out = model(images(model, batch=2))
    out.mean().backward()
    assert out.shape == (2, 42) and finite(out)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# ---------------------------------------------------------------------- side by side with timm
def twin(name: str, tmp_path, **kw):
    """timm's model and ours with timm's weights, loaded from a file timm saved."""
    torch.manual_seed(0)
    theirs = timm.create_model(name, **kw).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(theirs.state_dict(), path)
    return theirs, attnlab.create_model(name, checkpoint_path=path, **kw).eval(), path


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_pretrained_cfg_is_timms(name):
    """input size, mean/std, interpolation, crop, classes, first conv and classifier as timm's
    default weights for the name; timm's data config reads ours the same."""
    with torch.device("meta"):
        ours = attnlab.create_model(name, depth=1)
    theirs = timm.models.get_pretrained_cfg(name).to_dict()
    fields = ("input_size", "fixed_input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode",
              "first_conv", "classifier", "pool_size")
    assert {k: ours.pretrained_cfg[k] for k in fields} == {k: theirs[k] for k in fields}
    resolve = timm.data.resolve_model_data_config
    assert resolve(ours) == resolve(None, pretrained_cfg=theirs)


def test_own_configurations_state_their_input():
    cfg = probe_model("vit_digits").pretrained_cfg
    assert cfg["input_size"] == (1, 8, 8) and cfg["mean"] == (0.0,) and cfg["std"] == (1.0,) and cfg["num_classes"] == 10
    assert probe_model("vit_cifar", dynamic_img_size=True).pretrained_cfg["fixed_input_size"] is False


def test_vit_tiny_forward_intermediates_equal_timms(tmp_path):
    theirs, ours, _ = twin("vit_tiny_patch16_224", tmp_path, depth=4)
    x = torch.randn(1, 3, 224, 224)
    for kw in ({}, dict(indices=[0, 1, 3], output_fmt="NLC"), dict(indices=2, norm=True),
               dict(indices=[-1, 0], intermediates_only=True), dict(indices=[3], return_prefix_tokens=True, output_fmt="NLC")):
        want, got = theirs.forward_intermediates(x, **kw), ours.forward_intermediates(x, **kw)
        if not kw.get("intermediates_only"):
            torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
            want, got = want[1], got[1]
        assert len(got) == len(want), kw
        for a, b in zip(got, want):
            for s, t in zip(a, b) if kw.get("return_prefix_tokens") else [(a, b)]:
                torch.testing.assert_close(s, t, rtol=1e-4, atol=1e-5)
    assert ours.feature_info == theirs.feature_info


def test_vit_tiny_features_only_equal_timms(tmp_path):
    """create_model(..., features_only=True) against timm's, same file: same levels, same maps."""
    theirs, _, path = twin("vit_tiny_patch16_224", tmp_path, depth=4)
    x = torch.randn(1, 3, 224, 224)
    for kw in ({}, dict(out_indices=(0, 1, 2, 3)), dict(out_indices=(0, -2))):
        t = timm.create_model("vit_tiny_patch16_224", depth=4, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              features_only=True, **kw).eval()
        o = attnlab.create_model("vit_tiny_patch16_224", depth=4, pretrained=True, checkpoint_path=path,
                                 features_only=True, **kw).eval()
        for attr in ("channels", "reduction", "module_name"):
            assert getattr(o.feature_info, attr)() == getattr(t.feature_info, attr)(), (kw, attr)
        assert len(o.feature_info) == len(t.feature_info) and o.feature_info.out_indices == t.feature_info.out_indices
        assert o.feature_info.get_dicts(["num_chs", "module"]) == t.feature_info.get_dicts(["num_chs", "module"])
        assert len(o.model.blocks) == len(t.model.blocks)  # both trimmed after the last level
        for a, b in zip(o(x), t(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_classifier_reset_without_pooling_equals_timms(tmp_path):
    """reset_classifier(0, ''): every token after the final norm, as timm. (To "avg" timm keeps the
    norm on every token; ours moves it after the average, the layout global_pool="avg" builds.)"""
    theirs, ours, _ = twin("vit_tiny_patch16_224", tmp_path, depth=2)
    x = torch.randn(1, 3, 224, 224)
    for m in (theirs, ours):
        m.reset_classifier(0, "")
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_average_pooling_twin_without_class_token(tmp_path):
    theirs, ours, _ = twin("vit_tiny_patch16_224", tmp_path, depth=2, class_token=False, global_pool="avg")
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    want, got = theirs.forward_intermediates(x, output_fmt="NLC"), ours.forward_intermediates(x, output_fmt="NLC")
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- create_model's weights
def test_checkpoint_path_loads_strictly_and_pretrained_starts_a_fresh_head(tmp_path):
    theirs, ours, path = twin("vit_tiny_patch16_224", tmp_path, depth=2)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(1000, 192\), model \(5, 192\)"):
        attnlab.create_model("vit_tiny_patch16_224", depth=2, checkpoint_path=path, num_classes=5)
    for classes in (5, 0):
        tuned = attnlab.create_model("vit_tiny_patch16_224", depth=2, pretrained=True, checkpoint_path=path,
                                     num_classes=classes).eval()
        torch.testing.assert_close(tuned.forward_features(x), theirs.forward_features(x), rtol=1e-4, atol=1e-5)
        assert tuned(x).shape == ((1, 5) if classes else (1, 192))
    # more than the head does not fit: refused, as a strict load
    with pytest.raises(CheckpointError, match="wrong shapes"):
        attnlab.create_model("vit_tiny_patch16_224", depth=2, embed_dim=96, pretrained=True, checkpoint_path=path,
                             num_classes=5)


def test_pretrained_without_a_file_says_so():
    with pytest.raises(CheckpointError) as e:
        attnlab.create_model("vit_tiny_patch16_224", pretrained=True)
    assert str(e.value).startswith("create_model('vit_tiny_patch16_224', pretrained=True): attnlab ships weights only "
                                   "for cct_4_3x2_32 and downloads nothing; pass checkpoint_path=FILE")
    with pytest.raises(CheckpointError, match="does not exist"):
        attnlab.create_model("vit_digits", pretrained=True, checkpoint_path="no/such/file.safetensors")


def test_checkpoint_path_of_any_family(tmp_path):
    """Not only ViTs: an attnlab checkpoint of a language model loads by create_model."""
    small = dict(vocab_size=50, embed_dim=16, hidden_dim=16)
    torch.manual_seed(0)
    lm = attnlab.create_model("gru_lm_small", **small).eval()
    attnlab.save_checkpoint(lm, tmp_path / "lm.safetensors")
    again = attnlab.create_model("gru_lm_small", checkpoint_path=tmp_path / "lm.safetensors", **small)
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), again.state_dict().values()))


def test_an_untrusted_checkpoint_path_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=UNTRUSTED_PICKLE):
        attnlab.create_model("vit_digits", pretrained=True, checkpoint_path=tmp_path / "evil.pth")


# ---------------------------------------------------------------------- what is refused
@pytest.mark.parametrize("kw, error, message", [
    (dict(features_only=True, out_indices=7), ConfigError, "the last n of 4 levels"),
    (dict(features_only=True, out_indices=[0, 4]), ConfigError, "level index 4 out of range for 4 levels"),
    (dict(features_only=True, output_fmt="NHWC"), ConfigError, "output_fmt='NHWC' is not allowed"),
    (dict(features_only=True, feature_cls="hook"), UnsupportedError, "timm's 'getter'"),
    (dict(out_indices=(1, 2)), ConfigError, "out_indices: option of features_only=True"),
    (dict(global_pool="max"), ConfigError, "ViTConfig.global_pool='max' is not allowed; choose one of 'token', 'avg', ''"),
])
def test_refused(kw, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        attnlab.create_model("vit_digits", **kw)


def test_features_only_of_a_model_without_feature_maps():
    with pytest.raises(UnsupportedError, match=r"gru_lm_small \(RecurrentLM\) gives no feature maps"):
        attnlab.create_model("gru_lm_small", features_only=True)


def test_reset_classifier_refusals_leave_the_model():
    m = attnlab.create_model("vit_digits", class_token=False, global_pool="avg")
    for args in ((3, "token"), (3, "max"), (-1,), (True,)):
        with pytest.raises(ConfigError):
            m.reset_classifier(*args)
    assert m.cfg.global_pool == "avg" and m.num_classes == 10 and m.head.out_features == 10


def test_dynamic_image_size_maps_follow_the_image():
    m = attnlab.create_model("vit_digits", dynamic_img_size=True, features_only=True, out_indices=(0, 3)).eval()
    outs = m(torch.randn(2, 1, 12, 6))
    assert [o.shape for o in outs] == [(2, 64, 6, 3)] * 2
