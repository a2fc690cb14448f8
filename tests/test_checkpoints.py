"""Checkpoints: what timm, torchvision, Hugging Face and the JAX reference save loads into our
ViT with the same logits (1e-4, eval mode), our exports load back into them, and every bad
input is a CheckpointError that names the problem and leaves the model untouched.

Anchors are built from random initialisation (nothing is downloaded); each anchor package is
optional and its tests skip when it is absent.
"""

from __future__ import annotations

import argparse
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import attnlab
from attnlab.checkpoints import detect_format, load_checkpoint, load_model, read_checkpoint, save_checkpoint
from attnlab.errors import CheckpointError, UnsupportedError
from attnlab.models import VisionTransformer, ViTConfig, create_model

TOL = 1e-4
# A small patch-8 model at a non-224 size with 37 classes, in each library's terms.
P8 = dict(img_size=64, patch_size=8, num_classes=37, embed_dim=64, depth=2, num_heads=4)


def jitter(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb the parameters the libraries' inits leave constant (biases, LayerNorms, class
    tokens, torchvision's zero head), which would hide a swapped or transposed tensor. Large
    random matrices are left alone (perturbing them only costs time)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() <= 65536 or bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def blank(name: str, **kw) -> VisionTransformer:
    """One of our models with uninitialised weights (no time spent on a random init), for
    tests where a strict load then overwrites every tensor."""
    with torch.device("meta"):
        model = create_model(name, **kw)
    return model.to_empty(device="cpu").eval()


def image(size: int = 224, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ours(**kw) -> VisionTransformer:
    return VisionTransformer(ViTConfig(**kw)).eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err < tol, f"max abs difference {err:.3g} >= {tol}"


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before) -> bool:
    after = model.state_dict()
    return all(torch.equal(after[k], v) for k, v in before.items())


# ------------------------------------------------------------------------- anchors
def timm_vit(**kw):
    timm = pytest.importorskip("timm", reason="timm is not installed (anchor for timm checkpoints)")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return jitter(TimmViT(**kw)), timm


def tv_vit(**kw):
    tvm = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    return jitter(tvm.VisionTransformer(**kw))


def hf_vit(**kw):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    return jitter(transformers.ViTForImageClassification(transformers.ViTConfig(**kw))), transformers


def hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def run(model, x):
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------------- ViT-B/16 from each library
def test_timm_b16_safetensors(tmp_path):
    timm = pytest.importorskip("timm")
    ref = jitter(timm.create_model("vit_base_patch16_224", pretrained=False))
    save_file(ref.state_dict(), tmp_path / "vit.safetensors")
    model = blank("vit_base_patch16_224")
    report = load_checkpoint(model, tmp_path / "vit.safetensors")
    assert report["format"] == "timm" and report["loaded"] == len(model.state_dict())
    assert report["resampled_pos_embed"] is None and report["norm_eps"] is None
    x = image(224, batch=1)
    close(run(model, x), run(ref, x))


def test_torchvision_b16_pth(tmp_path):
    tvm = pytest.importorskip("torchvision.models")
    ref = jitter(tvm.vit_b_16())
    torch.save(ref.state_dict(), tmp_path / "vit_b_16.pth")
    model = blank("vit_base_patch16_224")
    report = load_checkpoint(model, tmp_path / "vit_b_16.pth")
    assert report["format"] == "torchvision" and report["file_format"] == "torch"
    x = image(224, batch=1)
    close(run(model, x), run(ref, x))


def test_hf_b16_directory_and_eps(tmp_path):
    ref, transformers = hf_vit()  # ViTConfig() is B/16 at 224, layer_norm_eps=1e-12, 2 labels
    ref.save_pretrained(tmp_path / "hf")
    model = blank("vit_base_patch16_224", num_classes=2)
    report = load_checkpoint(model, tmp_path / "hf")
    assert report["format"] == "hf"
    assert report["norm_eps"] == {"from": 1e-6, "to": 1e-12}
    assert model.cfg.norm_eps == 1e-12
    assert all(m.eps == 1e-12 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    x = image(224, batch=1)
    close(run(model, x), hf_logits(ref, x))


def test_hf_eps_is_honoured_not_ignored(tmp_path):
    """A large eps makes the difference visible: adopted, outputs match; refused, a clear error."""
    ref, _ = hf_vit(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=256, num_labels=37, layer_norm_eps=0.5)
    ref.save_pretrained(tmp_path / "hf")
    x = image(64)
    plain = ours(**P8)
    before = snapshot(plain)
    with pytest.raises(CheckpointError, match="norm_eps"):
        load_checkpoint(plain, tmp_path / "hf", adopt_eps=False)
    assert unchanged(plain, before) and plain.cfg.norm_eps == 1e-6
    # Same weights, eps left at 1e-6: visibly different logits.
    plain.load_state_dict({k: v for k, v in _hf_as_ours(tmp_path / "hf").items()})
    assert (run(plain, x) - hf_logits(ref, x)).abs().max() > 1e-2
    model = ours(**P8)
    report = load_checkpoint(model, tmp_path / "hf")
    assert report["norm_eps"] == {"from": 1e-6, "to": 0.5}
    close(run(model, x), hf_logits(ref, x))


def _hf_as_ours(path):
    from attnlab.checkpoints import hf

    return hf.to_ours(read_checkpoint(path).tensors)[0]


# ------------------------------------------------------------------------- S/16, average pooling, no class token
def test_timm_s16_avg_pool_no_class_token_both_ways(tmp_path):
    timm = pytest.importorskip("timm")
    ref = jitter(timm.create_model("vit_small_patch16_224", pretrained=False, class_token=False, global_pool="avg"))
    assert "fc_norm.weight" in ref.state_dict() and "cls_token" not in ref.state_dict()
    save_file(ref.state_dict(), tmp_path / "s16.safetensors")
    model = blank("vit_small_patch16_224", class_token=False, global_pool="avg")
    load_checkpoint(model, tmp_path / "s16.safetensors")
    x = image(224, batch=1)
    close(run(model, x), run(ref, x))
    # Reverse: our export in timm's layout loads strictly into timm.
    jitter(model, seed=5)
    save_checkpoint(model, tmp_path / "ours_as_timm.safetensors", format="timm")
    ref.load_state_dict(load_file(tmp_path / "ours_as_timm.safetensors"), strict=True)
    close(run(ref, x), run(model, x))


# ------------------------------------------------------------------------- patch 8, 64 px, 37 classes, every format
def test_patch8_37_classes_timm(tmp_path):
    ref, _ = timm_vit(**P8)
    save_file(ref.state_dict(), tmp_path / "p8.safetensors")
    model = ours(**P8)
    assert load_checkpoint(model, tmp_path / "p8.safetensors")["format"] == "timm"
    close(run(model, image(64)), run(ref, image(64)))


def test_patch8_37_classes_torchvision(tmp_path):
    ref = tv_vit(image_size=64, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=256, num_classes=37)
    torch.save(ref.state_dict(), tmp_path / "p8.pth")
    model = ours(**P8)
    assert load_checkpoint(model, tmp_path / "p8.pth")["format"] == "torchvision"
    close(run(model, image(64)), run(ref, image(64)))


def test_torchvision_pre_logits_and_legacy_mlp_names(tmp_path):
    ref = tv_vit(image_size=64, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=256, num_classes=37,
                 representation_size=64)
    sd = ref.state_dict()
    # torchvision < 0.12 named the MLP layers linear_1 / linear_2.
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in sd.items()}
    torch.save(old, tmp_path / "old.pth")
    model = ours(**P8, pre_logits=True)
    load_checkpoint(model, tmp_path / "old.pth")
    close(run(model, image(64)), run(ref, image(64)))


def test_patch8_37_classes_hf(tmp_path):
    ref, _ = hf_vit(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=256, num_labels=37)
    ref.save_pretrained(tmp_path / "hf")
    model = ours(**P8)
    load_checkpoint(model, tmp_path / "hf")
    close(run(model, image(64)), hf_logits(ref, image(64)))
    # The same weights as a plain torch.save of the in-memory state dict (new module names).
    torch.save(ref.state_dict(), tmp_path / "hf_state.pt")
    model2 = ours(**P8)
    report = load_checkpoint(model2, tmp_path / "hf_state.pt")
    assert report["format"] == "hf" and any("1e-12" in n for n in report["notes"])  # eps could not be checked
    close(run(model2, image(64)), hf_logits(ref, image(64)))
    # load_model builds the right model (eps 1e-12 included) from config.json alone.
    built, report = load_model(tmp_path / "hf", return_report=True)
    assert built.cfg.norm_eps == 1e-12 and built.cfg.num_classes == 37 and built.cfg.patch_size == 8
    assert report["norm_eps"] is None  # built with the checkpoint's eps, nothing to change
    close(run(built, image(64)), hf_logits(ref, image(64)))


def test_hf_vit_model_with_pooler_is_pre_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=256)
    ref = jitter(transformers.ViTModel(cfg, add_pooling_layer=True))
    ref.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert model.cfg.num_classes == 0 and model.cfg.pre_logits
    x = image(64)
    with torch.no_grad():
        close(run(model, x), ref(pixel_values=x).pooler_output)


# ------------------------------------------------------------------------- exports into the other libraries
def test_export_to_hf_loads_with_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = jitter(ours(**P8), seed=3)
    weights = save_checkpoint(model, tmp_path / "export", format="hf")
    assert weights == tmp_path / "export" / "model.safetensors"
    ref, info = transformers.ViTForImageClassification.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert ref.config.layer_norm_eps == model.cfg.norm_eps
    close(hf_logits(ref.eval(), image(64)), run(model, image(64)))
    # ... and back into ours.
    again = load_model(tmp_path / "export")
    close(run(again, image(64)), run(model, image(64)))


def test_export_to_timm_and_torchvision(tmp_path):
    model = jitter(ours(**P8), seed=4)
    x = image(64)
    ref, _ = timm_vit(**P8)
    save_checkpoint(model, tmp_path / "t.safetensors", format="timm")
    ref.load_state_dict(load_file(tmp_path / "t.safetensors"), strict=True)
    close(run(ref, x), run(model, x))
    tv = tv_vit(image_size=64, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=256, num_classes=37)
    save_checkpoint(model, tmp_path / "tv.safetensors", format="torchvision")
    tv.load_state_dict(load_file(tmp_path / "tv.safetensors"), strict=True)
    close(run(tv, x), run(model, x))


def test_export_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(UnsupportedError, match="global_pool"):
        save_checkpoint(ours(**{**P8, "class_token": False, "global_pool": "avg"}), tmp_path / "x", format="hf")
    with pytest.raises(UnsupportedError, match="pre_logits"):
        save_checkpoint(ours(**P8, pre_logits=True), tmp_path / "x", format="hf")
    with pytest.raises(UnsupportedError, match="rel_pos"):
        save_checkpoint(ours(**P8, pos_embed="relative"), tmp_path / "x.safetensors", format="timm")
    with pytest.raises(UnsupportedError, match="unknown checkpoint format"):
        save_checkpoint(ours(**P8), tmp_path / "x", format="onnx")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.safetensors").exists()


def test_save_names_the_formats_a_model_can_be_saved_in(tmp_path):
    """A model a format cannot hold (a language model in a ViT layout, a ViT the layout cannot
    express) gets one UnsupportedError line naming the formats it can be saved in; nothing is written."""
    lstm = create_model("lstm_lm_small", vocab_size=11)
    for fmt in ("hf", "timm", "torchvision"):
        with pytest.raises(UnsupportedError, match=r"^cannot save a RecurrentLM in the \w+ layout: .*; "
                                                   r"it can be saved with format='attnlab'$") as e:
            save_checkpoint(lstm, tmp_path / "x", format=fmt)
        assert "\n" not in str(e.value)
    avg = ours(**{**P8, "class_token": False, "global_pool": "avg"})
    with pytest.raises(UnsupportedError, match=r"class_token=False.*format='attnlab' or 'timm'$"):
        save_checkpoint(avg, tmp_path / "x", format="torchvision")
    assert not (tmp_path / "x").exists()


def test_our_format_round_trip_with_config(tmp_path):
    model = jitter(ours(**{**P8, "class_token": False, "global_pool": "avg", "pos_embed": "sincos2d", "norm_eps": 1e-5}))
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["attnlab_config"])["pos_embed"] == "sincos2d" and meta["attnlab_model"] == "vit"
    again = load_model(path)
    assert again.cfg == model.cfg
    close(run(again, image(64)), run(model, image(64)), tol=1e-6)
    # Config mismatches invisible in the shapes (heads, position kind) are caught.
    wrong = ours(**{**P8, "class_token": False, "global_pool": "avg", "pos_embed": "none", "num_heads": 8})
    with pytest.raises(CheckpointError, match="num_heads: checkpoint 4, model 8") as e:
        load_checkpoint(wrong, path)
    assert "pos_embed: checkpoint 'sincos2d', model 'none'" in str(e.value)


def test_registered_model_comes_back_by_name(tmp_path):
    model = jitter(create_model("vit_digits", num_classes=7))
    save_checkpoint(model, tmp_path / "digits.safetensors")
    again = load_model(tmp_path / "digits.safetensors")
    assert again.name == "vit_digits" and again.cfg == model.cfg
    x = torch.rand(3, 1, 8, 8)
    close(run(again, x), run(model, x), tol=1e-6)


def test_our_config_in_a_json_beside_the_weights(tmp_path):
    model = jitter(ours(**P8))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "w.json").write_text(json.dumps({"attnlab_config": {**P8, "norm_eps": 1e-6}, "attnlab_model": "tiny"}))
    again = load_model(tmp_path / "w.pt")
    assert again.name == "tiny"
    close(run(again, image(64)), run(model, image(64)), tol=1e-6)


def test_containers_and_wrapper_prefixes_are_unwrapped(tmp_path):
    ref, _ = timm_vit(**P8)
    blob = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "optimizer": {}}
    torch.save(blob, tmp_path / "train.pth")
    model = ours(**P8)
    report = load_checkpoint(model, tmp_path / "train.pth")
    assert any("state_dict" in n for n in report["notes"]) and any("module." in n for n in report["notes"])
    close(run(model, image(64)), run(ref, image(64)))
    # A state dict in memory works too.
    model2 = ours(**P8)
    load_checkpoint(model2, ref.state_dict())
    close(run(model2, image(64)), run(ref, image(64)))


# ------------------------------------------------------------------------- the JAX reference .npz
def timm_to_jax(sd: dict[str, torch.Tensor], heads: int) -> dict[str, np.ndarray]:
    """timm weights in the names and layouts of google-research/vision_transformer."""
    a = {k: v.detach().numpy() for k, v in sd.items()}
    c = a["cls_token"].shape[-1]
    d = c // heads
    out = {
        "cls": a["cls_token"],
        "embedding/kernel": a["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # (C,in,p,p) -> HWIO
        "embedding/bias": a["patch_embed.proj.bias"],
        "Transformer/posembed_input/pos_embedding": a["pos_embed"],
        "Transformer/encoder_norm/scale": a["norm.weight"],
        "Transformer/encoder_norm/bias": a["norm.bias"],
        "head/kernel": a["head.weight"].T,
        "head/bias": a["head.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in a if k.startswith("blocks."))
    for i in range(depth):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = a[b + "norm1.weight"], a[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = a[b + "norm2.weight"], a[b + "norm2.bias"]
        w, bias = a[b + "attn.qkv.weight"], a[b + "attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            out[mha + n + "/kernel"] = w[j * c:(j + 1) * c].T.reshape(c, heads, d)  # (C, H, D)
            out[mha + n + "/bias"] = bias[j * c:(j + 1) * c].reshape(heads, d)
        out[mha + "out/kernel"] = a[b + "attn.proj.weight"].T.reshape(heads, d, c)  # (H, D, C)
        out[mha + "out/bias"] = a[b + "attn.proj.bias"]
        for j in (0, 1):
            out[p + f"MlpBlock_3/Dense_{j}/kernel"] = a[b + f"mlp.fc{j + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{j}/bias"] = a[b + f"mlp.fc{j + 1}.bias"]
    return out


def big_vision_scanned(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights as big_vision writes them: ``params/`` prefix, position embedding at
    the top, sub-modules renumbered and every block stacked along a leading axis."""
    out, stacks = {}, {}
    for k, v in arrays.items():
        if k.startswith("Transformer/encoderblock_"):
            i, rest = k[len("Transformer/encoderblock_"):].split("/", 1)
            rest = (rest.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
                    .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"))
            stacks.setdefault(rest, {})[int(i)] = v
        elif k == "Transformer/posembed_input/pos_embedding":
            out["params/pos_embedding"] = v
        else:
            out["params/" + k] = v
    for rest, per in stacks.items():
        out["params/Transformer/encoderblock/" + rest] = np.stack([per[i] for i in sorted(per)])
    return out


def test_jax_npz_matches_timm(tmp_path):
    ref, timm = timm_vit(**P8)
    arrays = timm_to_jax(ref.state_dict(), heads=4)
    np.savez(tmp_path / "vit.npz", **arrays)
    # The hand-built file is what timm's own JAX reader expects: it reproduces the model.
    check, _ = timm_vit(**P8)
    check.load_pretrained(str(tmp_path / "vit.npz"))
    close(run(check, image(64)), run(ref, image(64)), tol=1e-6)

    model = ours(**P8)
    report = load_checkpoint(model, tmp_path / "vit.npz")
    assert report["format"] == "jax" and report["file_format"] == "numpy"
    close(run(model, image(64)), run(ref, image(64)))

    np.savez(tmp_path / "bv.npz", **big_vision_scanned(arrays))
    model2 = ours(**P8)
    load_checkpoint(model2, tmp_path / "bv.npz")
    close(run(model2, image(64)), run(ref, image(64)))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", cls=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="plain numeric arrays"):
        load_checkpoint(ours(**P8), tmp_path / "obj.npz")


# ------------------------------------------------------------------------- position embedding resampling
def test_224_checkpoint_into_384_model_resamples(tmp_path):
    pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed

    small = dict(patch_size=16, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    ref, _ = timm_vit(img_size=224, **small)
    save_file(ref.state_dict(), tmp_path / "224.safetensors")
    model = ours(img_size=384, **small)
    report = load_checkpoint(model, tmp_path / "224.safetensors")
    assert report["resampled_pos_embed"]["from"] == [14, 14] and report["resampled_pos_embed"]["to"] == [24, 24]
    # timm's defaults for checkpoint loading: bicubic, antialias=True
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(24, 24), num_prefix_tokens=1)
    close(model.pos_embed.weight.detach(), expected, tol=1e-6)
    assert torch.equal(model.pos_embed.weight[:, 0], ref.pos_embed[:, 0])  # class token position kept
    # It runs at 384 and agrees with timm given the same resampled table.
    ref384, _ = timm_vit(img_size=384, **small)
    ref384.load_state_dict({**ref.state_dict(), "pos_embed": expected})
    close(run(model, image(384, batch=1)), run(ref384, image(384, batch=1)))

    # Our own format: load_model with a larger image size does the same.
    save_checkpoint(model, tmp_path / "384.safetensors")
    back = load_model(tmp_path / "384.safetensors", img_size=192)
    assert back.pos_embed.weight.shape == (1, 1 + 12 * 12, 64)


# ------------------------------------------------------------------------- bad inputs
@pytest.fixture
def tiny_timm_file(tmp_path):
    ref, _ = timm_vit(**P8)
    save_file(ref.state_dict(), tmp_path / "ok.safetensors")
    return tmp_path / "ok.safetensors", ref.state_dict()


def expect_refusal(model, source, *patterns: str, **kw) -> str:
    before = snapshot(model)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(model, source, **kw)
    assert unchanged(model, before), "a failed load changed the model"
    for p in patterns:
        assert p in str(e.value), f"{p!r} not in: {e.value}"
    return str(e.value)


def test_truncated_and_corrupt_files(tmp_path, tiny_timm_file):
    good, sd = tiny_timm_file
    model = ours(**P8)
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    expect_refusal(model, tmp_path / "cut.safetensors", "cut.safetensors", "truncated")
    torch.save(sd, tmp_path / "full.pth")
    blob = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 2])
    expect_refusal(model, tmp_path / "cut.pth", "cut.pth", "truncated")
    (tmp_path / "noise.bin").write_bytes(b"\x00\x01garbage" * 100)
    expect_refusal(model, tmp_path / "noise.bin", "noise.bin")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    expect_refusal(model, tmp_path / "bad.npz", "bad.npz")
    expect_refusal(model, tmp_path / "nowhere.safetensors", "does not exist")
    (tmp_path / "emptydir").mkdir()
    expect_refusal(model, tmp_path / "emptydir", "model.safetensors")


class Payload:
    """Unpickling this would create a file: proof that arbitrary code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        torch.save({"head.weight": torch.zeros(37, 64), "payload": Payload(marker)}, f)
    assert not marker.exists()
    msg = expect_refusal(ours(**P8), tmp_path / "evil.pth", "evil.pth", "not trusted", "pathlib.Path", "nothing in it was run")
    assert not marker.exists(), "unpickling ran code"
    assert "weights_only" not in msg and "\n" not in msg, "the refusal repeats PyTorch's advice to run the file"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)
    expect_refusal(ours(**P8), tmp_path / "evil.bin")
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path):
    (tmp_path / "notes.pth").write_text("notes on the model: lr 3e-3, 300 epochs\n")
    (tmp_path / "noise.pth").write_bytes(bytes(range(7, 256)) * 8)
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, what in (("notes.pth", "a text file starting 'notes on the model"),
                       ("noise.pth", "neither a PyTorch zip archive nor a pickle: it starts with bytes 07 08"),
                       ("empty.pth", "the file is empty")):
        msg = expect_refusal(ours(**P8), tmp_path / name, name, "not a checkpoint", what)
        assert "not trusted" not in msg and "\n" not in msg


def test_a_later_pickle_protocol_is_refused_without_torchs_warning(tmp_path, tiny_timm_file):
    _, sd = tiny_timm_file
    torch.save(sd, tmp_path / "p4.pth", pickle_protocol=4)  # the safe reader cannot read protocol 4
    torch.save(sd, tmp_path / "p3.pth", pickle_protocol=3)  # it reads protocol 3, with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expect_refusal(ours(**P8), tmp_path / "p4.pth", "p4.pth", "pickle protocol 4", "nothing in it was run")
        attnlab.load_checkpoint(ours(**P8), tmp_path / "p3.pth")
    assert not caught, [str(w.message) for w in caught]


def test_timm_training_checkpoint_with_argparse_namespace_loads(tmp_path):
    """timm's train.py saves model_best.pth.tar with its argparse.Namespace under "args": allowed, as
    timm allows it (torch.serialization.safe_globals([argparse.Namespace])), and nothing else is."""
    ref, _ = timm_vit(**P8)
    args = argparse.Namespace(model="vit_p8", lr=0.1, epochs=300, smoothing=0.1, mean=None, input_size=[3, 64, 64])
    torch.save({"epoch": 3, "arch": "vit_p8", "state_dict": ref.state_dict(), "version": 2, "args": args,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "metric": 81.2},
               tmp_path / "model_best.pth.tar")
    model = ours(**P8)
    assert attnlab.load_checkpoint(model, tmp_path / "model_best.pth.tar")["format"] == "timm"
    close(run(model, image(64)), run(ref, image(64)))

    marker = tmp_path / "pwned"
    torch.save({"state_dict": ref.state_dict(), "args": argparse.Namespace(model=Payload(marker))}, tmp_path / "evil.pth.tar")
    expect_refusal(ours(**P8), tmp_path / "evil.pth.tar", "not trusted", "pathlib.Path", "nothing in it was run")
    assert not marker.exists(), "unpickling ran code"


def test_resnet_state_dict_is_refused(tmp_path):
    tvm = pytest.importorskip("torchvision.models")
    torch.save(tvm.resnet18().state_dict(), tmp_path / "resnet18.pth")
    msg = expect_refusal(ours(**P8), tmp_path / "resnet18.pth", "not a Vision Transformer", "ResNet", "conv1.weight")
    assert len(msg) < 600


def test_language_model_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=64, vocab_size=50))
    bert.save_pretrained(tmp_path / "bert")
    expect_refusal(ours(**P8), tmp_path / "bert", "language model", "model_type='bert'", "word_embeddings")


def test_wrong_depth(tmp_path):
    ref, _ = timm_vit(**{**P8, "depth": 3})
    save_file(ref.state_dict(), tmp_path / "deep.safetensors")
    expect_refusal(ours(**P8), tmp_path / "deep.safetensors", "3 blocks, the model 2", "unexpected keys (12)",
                   "blocks.2.self_attn.qkv.weight (from blocks.2.attn.qkv.weight)")
    # Fewer blocks than the model: the missing ones are named.
    expect_refusal(ours(**{**P8, "depth": 4}), tmp_path / "deep.safetensors", "missing keys", "blocks.3.")


def test_wrong_num_classes_names_key_and_shapes(tiny_timm_file):
    path, _ = tiny_timm_file
    msg = expect_refusal(ours(**{**P8, "num_classes": 10}), path, "head.weight: checkpoint (37, 64), model (10, 64)",
                         "classes (num_classes): checkpoint 37, model 10")
    assert "Nothing was loaded" in msg


def test_wrong_shape_names_the_foreign_key(tmp_path):
    ref = tv_vit(image_size=64, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=256, num_classes=37)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    expect_refusal(ours(**{**P8, "mlp_ratio": 2.0}), tmp_path / "tv.pth",
                   "blocks.0.ff.fc1.weight (from encoder.layers.encoder_layer_0.mlp.0.weight): "
                   "checkpoint (256, 64), model (128, 64)")


def test_missing_key_strict_and_lenient(tmp_path, tiny_timm_file):
    _, sd = tiny_timm_file
    sd = {k: v for k, v in sd.items() if k != "norm.weight"}
    save_file(sd, tmp_path / "holey.safetensors")
    model = ours(**P8)
    expect_refusal(model, tmp_path / "holey.safetensors", "missing keys (1): norm.weight")
    report = load_checkpoint(model, tmp_path / "holey.safetensors", strict=False)
    assert report["missing"] == ["norm.weight"]
    # strict=False never forgives a wrong shape.
    expect_refusal(ours(**{**P8, "embed_dim": 32}), tmp_path / "holey.safetensors", "wrong shapes", strict=False)


def test_hf_config_disagreeing_with_the_model(tmp_path):
    ref, _ = hf_vit(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=256, num_labels=37)
    ref.save_pretrained(tmp_path / "hf")
    model = ours(**{**P8, "num_heads": 2})
    expect_refusal(model, tmp_path / "hf", "num_heads: checkpoint 4, model 2")
    assert model.cfg.norm_eps == 1e-6  # nothing adopted from a refused checkpoint


def test_detect_format_by_keys():
    assert detect_format(["cls_token", "pos_embed", "blocks.0.attn.qkv.weight"]) == "timm"
    assert detect_format(["cls_token", "pos_embed.weight", "blocks.0.self_attn.qkv.weight"]) == "attnlab"
    assert detect_format(["class_token", "encoder.layers.encoder_layer_0.ln_1.weight"]) == "torchvision"
    assert detect_format(["vit.embeddings.cls_token", "classifier.weight"]) == "hf"
    assert detect_format(["cls", "embedding/kernel", "Transformer/encoder_norm/scale"]) == "jax"
    with pytest.raises(CheckpointError, match="not a Vision Transformer"):
        detect_format(["fc.weight", "fc.bias"])


@pytest.mark.parametrize("fmt, chans, expected", [
    ("torchvision", 3, ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),  # torchvision's ViT transforms
    ("hf", 3, ([0.5] * 3, [0.5] * 3)), ("hf", 1, ([0.5], [0.5])),  # ViTImageProcessor's default, any channel count
    ("torchvision", 1, None),  # ImageNet's three values say nothing about a grey model
    ("timm", 3, None), ("attnlab", 3, None),  # timm's weights differ per name (pretrained_cfg); ours: the run's own
])
def test_a_layout_states_the_input_its_weights_expect(tmp_path, fmt, chans, expected):
    """load_checkpoint's report and a file opened through runs.open carry the normalisation the
    layout's weights were trained with; fine-tuning from such weights keeps it."""
    from attnlab import runs
    from attnlab.tasks.image import init_from

    vit = VisionTransformer(ViTConfig(img_size=16, patch_size=4, in_chans=chans, num_classes=3, embed_dim=16, depth=1,
                                      num_heads=2))
    path = save_checkpoint(vit, tmp_path / (f"{fmt}.safetensors" if fmt != "hf" else "hf_dir"), format=fmt)
    path = path.parent if fmt == "hf" else path
    fresh = VisionTransformer(vit.cfg)
    report = load_checkpoint(fresh, path)
    assert report["normalize"] == (None if expected is None else {"mean": expected[0], "std": expected[1]})
    norm = init_from(VisionTransformer(vit.cfg), str(path))
    assert (norm is None) == (expected is None) and (norm is None or (norm.mean, norm.std) == expected)
    if fmt in ("hf", "attnlab"):  # files that carry their config open on their own
        extras = runs.open(path).extras
        got = extras.get("normalize")
        assert (got is None) == (expected is None) and (got is None or (got.mean, got.std) == expected)
