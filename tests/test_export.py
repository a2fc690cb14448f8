"""Graph capture of the models: torch.fx symbolic tracing (timm's FX feature extraction relies
on it), torch.export programs (.pt2) and ONNX, each checked against the eager outputs."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.errors import ShapeError

TINY = dict(img_size=32, patch_size=8, depth=2, num_classes=5)  # on top of vit_tiny_patch16_224 (192 wide, 3 heads)
VIT_VARIANTS = [
    {},
    {"dynamic_img_size": True},
    {"global_pool": "avg", "class_token": False, "pos_embed": "sincos2d"},
    {"pos_embed": "relative"},
    {"patch_embed": "linear", "pre_logits": True},
    {"pos_embed": "sincos2d", "dynamic_img_size": True},
]


def tiny_vit(**overrides):
    torch.manual_seed(0)
    return attnlab.create_model("vit_tiny_patch16_224", **{**TINY, **overrides}).eval()


# ---------------------------------------------------------------------- torch.fx
@pytest.mark.parametrize("variant", VIT_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_fx_symbolic_trace_matches_eager(variant):
    m = tiny_vit(**variant)
    g = torch.fx.symbolic_trace(m)
    sizes = [(32, 32), (48, 40)] if variant.get("dynamic_img_size") else [(32, 32)]
    for b, (h, w) in zip((1, 3), sizes):
        x = torch.randn(b, 3, h, w)
        assert torch.equal(g(x), m(x))
    # the input checks are nodes of the graph: a bad image still gets the typed error
    with pytest.raises(ShapeError, match="patch size|expects images"):
        g(torch.randn(2, 3, 33, 32))


def test_fx_feature_extraction_torchvision_and_timm():
    """torchvision's and timm's FX feature extractors trace the model and return the same
    block outputs as forward_intermediates."""
    fe_tv = pytest.importorskip("torchvision.models.feature_extraction")
    timm_fx = pytest.importorskip("timm.models._features_fx")
    m = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    want = m.forward_intermediates(x, [0, 1])
    nodes = {"blocks.0": "b0", "blocks.1": "b1"}
    for create in (fe_tv.create_feature_extractor, timm_fx.create_feature_extractor):
        got = create(m, return_nodes=nodes)(x)
        assert torch.equal(got["b0"], want[0]) and torch.equal(got["b1"], want[1])
