"""The attention explorer's data (attnlab.viz.explore) and ``attnlab viz explore``; the page in a
real browser is tested in test_explore_browser.py."""

from __future__ import annotations

import base64
import contextlib
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.cli.main import main
from attnlab.data.tokenizers import BPETokenizer, train_tokenizer
from attnlab.data.transforms import default_normalization
from attnlab.decode.search import greedy_search
from attnlab.decode.stepper import make_stepper
from attnlab.errors import ConfigError, UnsupportedError
from attnlab.models import VisionTransformer, ViTConfig, create_model
from attnlab.models.lm import build_lm, lm_config
from attnlab.models.seq2seq import GRUAttentionConfig, GRUAttentionSeq2Seq
from attnlab.nn import Transformer, TransformerConfig
from attnlab.viz import explore as E
from attnlab.viz.text import token_labels
from attnlab.viz.vit import posembed_similarity

CORPUS = ["a dog runs .", "ein hund läuft .", "the cat sleeps .", "die katze schläft .", "a man reads a book .",
          "ein mann liest ein buch ."] * 4


def floats(s: str, *shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype="<f4").copy()).reshape(*shape)


def tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    base = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    return VisionTransformer(ViTConfig(**{**base, **kw}), name="tiny").eval()


def picture(size: int = 32) -> torch.Tensor:
    """uint8 (3, size, size): two ramps and a disc."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = torch.stack([xx / (size - 1), yy / (size - 1), ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < size).float()])
    return (x * 255).round().to(torch.uint8)


def tiny_lm(tok, position="rotary"):
    torch.manual_seed(0)
    return build_lm(lm_config("transformer", vocab_size=tok.vocab_size, d_model=32, num_layers=2, num_heads=4,
                              position=position, max_len=32)).eval()


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300, min_frequency=1)


def tiny_mt(tok):
    torch.manual_seed(0)
    cfg = TransformerConfig(tok.vocab_size, tok.vocab_size, d_model=32, num_heads=4, num_encoder_layers=2,
                            num_decoder_layers=2, d_ff=64, dropout=0.0, share_embeddings=True, pad_id=tok.pad_id)
    return Transformer(cfg).eval()


@contextlib.contextmanager
def cached_weights(modules):
    """The weights of every call of these attention modules, also on cached decoding steps
    (which the AttentionRecorder refuses): each call is asked for them, the caller gets its output."""
    calls, handles = [[] for _ in modules], []
    for m, got in zip(modules, calls):
        handles.append(m.register_forward_pre_hook(lambda m, a, kw: (a, {**kw, "need_weights": True}), with_kwargs=True))
        handles.append(m.register_forward_hook(lambda m, a, out, got=got: got.append(out[1]) or out[0]))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def worked_softmax(w: dict) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + bias) over the visible keys, from the page's stored numbers."""
    q, k = floats(w["q"], w["tq"], w["d_k"]), floats(w["k"], w["tk"], w["d_k"])
    s = q @ k.T * w["scale"]
    if w["bias"] is not None:
        s = s + floats(w["bias"], w["tq"], w["tk"])
    vis = torch.from_numpy(np.frombuffer(base64.b64decode(w["visible"]), dtype=np.uint8).copy()).reshape(w["tq"], w["tk"])
    return s.masked_fill(vis == 0, float("-inf")).softmax(-1)


# ---------------------------------------------------------------------- packing
def test_pack_attention_keeps_8_bits_of_each_row():
    w = torch.rand(2, 3, 5, 7).softmax(-1) ** 3
    w = w / w.sum(-1, keepdim=True)
    back = E.unpack_attention(E.pack_attention(w))
    step = w.amax(-1, keepdim=True) / 255
    assert back.shape == w.shape
    assert bool(((back - w).abs() <= step / 2 + 1e-7).all())
    assert E.packed_bytes(w.shape) == len(E.pack_attention(w)["q"]) + len(E.pack_attention(w)["rowmax"])


# ---------------------------------------------------------------------- ViT
def test_vit_data_are_the_models_numbers():
    vit, img = tiny_vit(), picture()
    d = E.explore_vit(vit, img, label="tiny", random_init=True, worked=(0, 2))
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (img[None] / 255 - mean) / std
    with torch.no_grad():
        maps = vit.get_attention_maps(x)
    attn = E.unpack_attention(d["sets"][0]["attention"])
    ref = torch.stack([m[0] for m in maps])
    assert attn.shape == (2, 4, 17, 17) and d["sets"][0]["layers"] == [0, 1]
    assert float((attn - ref).abs().max()) <= float(ref.max()) / 510 + 1e-7
    rollout = floats(d["rollout"]["values"], 2, 4, 4)
    torch.testing.assert_close(rollout[-1], vit.attention_rollout(maps)[0])
    torch.testing.assert_close(rollout[0], vit.attention_rollout(maps[:1])[0])
    sim = torch.from_numpy(np.frombuffer(base64.b64decode(d["posembed"]["q"]), dtype=np.uint8).copy()).float() / 127.5 - 1
    assert float((sim.reshape(16, 16) - posembed_similarity(vit).reshape(16, 16)).abs().max()) <= 1 / 127.5
    w = d["worked"]
    assert (w["layer"], w["head"], w["d_k"], w["tq"], w["tk"]) == (0, 2, 8, 17, 17)
    torch.testing.assert_close(worked_softmax(w), maps[0][0, 2], atol=1e-6, rtol=1e-5)  # Q, K recomputed = model's weights
    assert w["check"] < 1e-6
    assert d["meta"]["random_init"] is True and d["grid"] == [4, 4] and d["prefix"] == 1
    assert len(d["predictions"]) == 5 and d["image"]["src"].startswith("data:image/png;base64,")


def test_worked_head_check_catches_a_wrong_head():
    vit, img = tiny_vit(), picture()
    mha = vit.blocks[1].self_attn
    with E.keep_inputs(mha) as inputs, torch.no_grad():
        maps = vit.get_attention_maps(img[None] / 255)
    assert len(inputs) == 1
    assert E.worked_head(mha, inputs[0], maps[1], 1)["check"] < 1e-6
    assert E.worked_head(mha, inputs[0], maps[1][:, [0, 0, 0, 0]], 1)["check"] > 1e-3  # head 0's weights: caught


def test_lsa_vit_worked_head_uses_the_learned_scale_and_hides_the_diagonal():
    """Locality Self-Attention (lsa=true): the head's own learned scale, not 1/√d_k, and no
    query sees itself. The scales are moved off their 1/√d_k start so a head that ignored them
    would not match."""
    vit = tiny_vit(lsa=True)
    mha = vit.blocks[1].self_attn
    with torch.no_grad():
        mha.scale.copy_(torch.tensor([0.9, 0.05, 1.7, 0.3]))
    d = E.explore_vit(vit, picture(), label="lsa", worked=(1, 2))
    w = d["worked"]
    assert w["scale"] == pytest.approx(1.7) and w["check"] < 1e-5 and w["learned_scale"] is True  # the page says so
    assert E.explore_vit(tiny_vit(), picture(), label="plain", worked=(1, 2))["worked"]["learned_scale"] is False
    n = w["tq"]
    visible = np.frombuffer(base64.b64decode(w["visible"]), np.uint8).reshape(n, n)
    assert not visible.diagonal().any() and visible.sum() == n * (n - 1)


def test_vit_relative_position_bias_enters_the_worked_head():
    vit = tiny_vit(pos_embed="relative")
    d = E.explore_vit(vit, picture(), label="rel", worked=(-1, 1))
    assert d["worked"]["bias"] is not None and d["worked"]["check"] < 1e-6
    assert d["posembed"] is None and any("position-embedding" in n for n in d["notes"])
    assert E.explore_vit(tiny_vit(num_classes=0), picture(), label="features")["predictions"] == []


def test_vit_over_budget_keeps_evenly_spaced_blocks_and_says_so():
    vit = tiny_vit(depth=6)
    full = E.explore_vit(vit, picture(), label="t")
    per_layer = E.packed_bytes([4, 17, 17])
    size = len(E.render_page(full).encode("utf-8"))
    d = E.explore_vit(vit, picture(), label="t", budget=size - 3 * per_layer)
    keep = d["sets"][0]["layers"]
    assert 1 <= len(keep) < 6 and keep[-1] == 5 and keep == sorted(keep)
    assert len(E.render_page(d).encode("utf-8")) <= size - 3 * per_layer
    assert any("of the 6 blocks" in n for n in d["notes"])
    assert E.unpack_attention(d["sets"][0]["attention"]).shape[0] == len(keep)


def test_size_budget_vit_tiny_224_all_12_blocks(tmp_path):
    torch.manual_seed(0)
    vit = create_model("vit_tiny_patch16_224").eval()
    img = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)
    path = E.write_page(E.explore_vit(vit, img, label="vit_tiny_patch16_224", random_init=True), tmp_path / "tiny.html")
    data = _page_data(path.read_text(encoding="utf-8"))
    assert data["sets"][0]["layers"] == list(range(12))
    assert data["sets"][0]["attention"]["shape"] == [12, 3, 197, 197]
    assert path.stat().st_size <= 3_000_000, f"{path.stat().st_size / 1e6:.2f} MB > 3 MB"


# ---------------------------------------------------------------------- text
@pytest.mark.parametrize("position", ["rotary", "learned", "relative"])
def test_lm_attention_is_the_models(position):
    tok = train_tokenizer("char", " ".join(CORPUS))
    lm = tiny_lm(tok, position)
    text = "a dog reads a book"
    d = E.explore_lm(lm, tok, text, label="lm", worked=(1, 3))
    ids = torch.tensor([tok.encode(text)])
    x, ref = lm.pos.add(lm.embed(ids)), []  # the reference: the blocks' own need_weights path
    with torch.no_grad():
        for block in lm.blocks:
            x, w = block(x, causal=True, pos=lm.pos, need_weights=True)
            ref.append(w[0])
    attn = E.unpack_attention(d["sets"][0]["attention"])
    assert attn.shape == (2, 4, len(text), len(text))
    assert float((attn - torch.stack(ref)).abs().max()) <= 1 / 510 + 1e-7
    assert float(attn.triu(1).abs().max()) == 0.0  # causal
    torch.testing.assert_close(worked_softmax(d["worked"]), ref[1][3], atol=1e-6, rtol=1e-5)
    assert d["text"]["tokens"][1] == "·" and len(d["text"]["next"]) == len(text)


def test_translation_rows_are_the_decoding_steps(bpe):
    mt = tiny_mt(bpe)
    d = E.explore_translation(mt, bpe, bpe, "ein hund läuft .", "a dog runs .", label="mt", worked=(0, 1))
    src = bpe.encode("ein hund läuft .") + [bpe.eos_id]
    tgt = [bpe.bos_id] + bpe.encode("a dog runs .")
    ts, tt = len(src), len(tgt)
    sets = {s["id"]: E.unpack_attention(s["attention"]) for s in d["sets"]}
    assert sets["enc"].shape == (2, 4, ts, ts) and sets["dec"].shape == (2, 4, tt, tt) and sets["cross"].shape == (2, 4, tt, ts)
    assert float(sets["dec"].triu(1).abs().max()) == 0.0
    assert d["text"]["output"][-1] == "</s>" and len(d["text"]["target"]) == tt
    # step t of cached, incremental decoding attends exactly as row t of the teacher-forced pass
    stepper = make_stepper(mt, torch.tensor([src]), cached=True)  # with its key/value cache
    with torch.no_grad(), cached_weights([layer.cross_attn for layer in mt.decoder.layers]) as calls:
        for t in range(tt):
            stepper.step(torch.tensor([[tgt[t]]]))  # one new token per step
    steps = torch.stack([torch.cat([w[0] for w in c], dim=1) for c in calls])  # (L, H, Tt, Ts)
    assert float((sets["cross"] - steps).abs().max()) <= 1 / 510 + 1e-6
    torch.testing.assert_close(worked_softmax(d["worked"]), steps[0, 1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("which", ["enc", "dec"])
def test_translation_worked_head_of_any_attention(bpe, which):
    mt = tiny_mt(bpe)
    d = E.explore_translation(mt, bpe, bpe, "ein hund läuft .", "a dog runs .", label="mt", worked=(1, 2), worked_set=which)
    w = d["worked"]
    assert (w["set"], w["layer"], w["head"]) == (which, 1, 2) and w["check"] < 1e-6
    ref = E.unpack_attention(next(s for s in d["sets"] if s["id"] == which)["attention"])[1, 2]
    assert (w["tq"], w["tk"]) == tuple(ref.shape)
    assert float((worked_softmax(w) - ref).abs().max()) <= float(ref.max()) / 510 + 1e-6


def test_translation_without_target_uses_the_greedy_translation(bpe):
    mt = tiny_mt(bpe)
    d = E.explore_translation(mt, bpe, bpe, "a dog runs .", label="mt")
    src = torch.tensor([bpe.encode("a dog runs .") + [bpe.eos_id]])
    hyp = greedy_search(mt, src, bos=bpe.bos_id, eos=bpe.eos_id, pad=bpe.pad_id)[0]
    assert d["text"]["target"] == token_labels(bpe, [bpe.bos_id] + hyp)
    assert any("greedy" in n for n in d["notes"])
    text = d["text"]  # its own output read back: the same tokens (the end token is appended where greedy stopped at its length)
    assert not text["forced"] and text["predicted"][:-1] == text["output"][:-1] and len(text["predicted"]) == len(text["output"])


def test_a_forced_target_is_said_and_the_models_own_prediction_kept(bpe):
    mt = tiny_mt(bpe)
    d = E.explore_translation(mt, bpe, bpe, "ein hund läuft .", "die katze schläft .", label="mt")
    src = torch.tensor([bpe.encode("ein hund läuft .") + [bpe.eos_id]])
    tgt = bpe.encode("die katze schläft .")
    with torch.no_grad():
        own = mt(src, torch.tensor([[bpe.bos_id] + tgt]))[0].argmax(-1).tolist()
    text = d["text"]
    assert text["forced"] and text["output"] == token_labels(bpe, tgt + [bpe.eos_id])
    assert text["predicted"] == token_labels(bpe, own)
    differ = sum(a != b for a, b in zip(own, tgt + [bpe.eos_id]))
    assert differ > 0  # an untrained model does not predict the forced sentence
    assert any("forced" in n and f"differs from the target's at {differ} of {len(own)} steps" in n for n in d["notes"])


def test_translation_page_says_when_it_cuts_the_source_and_target(bpe):
    mt = tiny_mt(bpe)
    long = " ".join(["ein hund läuft ."] * 60)
    n_src, n_tgt = len(bpe.encode(long)), len(bpe.encode(long.replace("ein hund läuft", "a dog runs")))
    assert n_src > E.MAX_TEXT_TOKENS and n_tgt > E.MAX_TEXT_TOKENS
    d = E.explore_translation(mt, bpe, bpe, long, long.replace("ein hund läuft", "a dog runs"), label="mt")
    keep = E.MAX_TEXT_TOKENS - 1  # and the end token
    assert len(d["text"]["source"]) == len(d["text"]["target"]) == E.MAX_TEXT_TOKENS
    assert f"The source sentence has {n_src} tokens; the first {keep} are shown." in d["notes"]
    assert f"The target sentence has {n_tgt} tokens; the first {keep} are shown." in d["notes"]
    short = E.explore_translation(mt, bpe, bpe, "ein hund läuft .", "a dog runs .", label="mt")
    assert not any("are shown" in n for n in short["notes"])


def test_gru_attention_gives_its_alignment(bpe):
    torch.manual_seed(0)
    gru = GRUAttentionSeq2Seq(GRUAttentionConfig(bpe.vocab_size, bpe.vocab_size, embed_dim=16, hidden_dim=16, attn_dim=16,
                                                 dropout=0.0, pad_id=bpe.pad_id)).eval()
    d = E.explore_translation(gru, bpe, bpe, "ein hund läuft .", "a dog runs .", label="gru")
    a = E.unpack_attention(d["sets"][0]["attention"])
    assert a.shape[:2] == (1, 1) and a.shape[2] == len(d["text"]["target"]) and a.shape[3] == len(d["text"]["source"])
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:3]), atol=a.shape[-1] / 255, rtol=0)
    assert d["worked"] is None


def test_text_pages_keep_the_budget_too():
    tok = train_tokenizer("char", " ".join(CORPUS))
    torch.manual_seed(0)
    lm = build_lm(lm_config("transformer", vocab_size=tok.vocab_size, d_model=32, num_layers=6, num_heads=4,
                            max_len=64)).eval()
    text = " ".join(CORPUS)[:60]
    full = E.explore_lm(lm, tok, text, label="lm")
    size, per_layer = len(E.render_page(full).encode("utf-8")), E.packed_bytes([4, 60, 60])
    cut = E.explore_lm(lm, tok, text, label="lm", budget=size - 2 * per_layer)
    keep = cut["sets"][0]["layers"]
    assert full["sets"][0]["layers"] == list(range(6)) and len(keep) < 6 and keep[-1] == 5
    assert len(E.render_page(cut).encode("utf-8")) <= size - 2 * per_layer
    assert any(f"{len(keep)} of the 6 layers" in n for n in cut["notes"])
    assert E.evenly_spaced(12, 3) == [0, 6, 11] and E.evenly_spaced(12, 1) == [11] and E.evenly_spaced(4, 9) == [0, 1, 2, 3]


def test_random_k_attention_has_no_worked_head_and_says_why():
    """random-k draws its keys anew at every call: the page could not recompute the model's weights."""
    tok = train_tokenizer("char", " ".join(CORPUS))
    lm = tiny_lm(tok)
    lm.blocks[0].self_attn.random_k = 2
    d = E.explore_lm(lm, tok, "a dog runs", label="lm", worked=(0, 1))
    assert d["worked"] is None and any("random-k" in n for n in d["notes"])


def test_top_k_attention_has_no_worked_head_and_says_why():
    tok = train_tokenizer("char", " ".join(CORPUS))
    lm = tiny_lm(tok)
    lm.blocks[0].self_attn.topk = 2  # Explicit Sparse Transformer: not a plain softmax over the keys
    d = E.explore_lm(lm, tok, "a dog runs", label="lm", worked=(0, 1))
    assert d["worked"] is None and any("top-k" in n for n in d["notes"])
    attn = E.unpack_attention(d["sets"][0]["attention"])
    assert int((attn[0, 1, -1] > 0).sum()) == 2  # the recorded weights are the sparse ones


def test_recurrent_lm_is_refused_in_one_line():
    tok = train_tokenizer("char", "abc")
    lstm = build_lm(lm_config("lstm", vocab_size=tok.vocab_size, embed_dim=8, hidden_dim=8, num_layers=1))
    with pytest.raises(UnsupportedError, match="no attention"):
        E.explore_lm(lstm, tok, "abc", label="lstm")


# ---------------------------------------------------------------------- the page file
def _page_data(html: str) -> dict:
    m = re.search(r'<script id="attnlab-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_page_is_self_contained_and_survives_hostile_text(tmp_path):
    tok = train_tokenizer("word", "</script><script>alert(1)</script> __DATA__ /*__JS__*/ <!-- x")
    lm = build_lm(lm_config("transformer", vocab_size=tok.vocab_size, d_model=16, num_layers=1, num_heads=2, max_len=16))
    d = E.explore_lm(lm.eval(), tok, "</script><script>alert(1)</script> __DATA__ /*__JS__*/ <!-- x", label="<b>x</b>")
    html = E.render_page(d)
    assert html.count("</script>") == 2 and "<!-- x" not in html  # the data cannot close its script tag
    assert _page_data(html)["text"]["tokens"] == d["text"]["tokens"]
    assert "<title>attention of &lt;b>x&lt;/b></title>" in html
    no_requests = (r"\bsrc=\"http", r"\bhref=\"http", r"https?://(?!www\.w3\.org/2000/svg)", r"\bfetch\(", r"XMLHttpRequest",
                   r"@import")
    for pattern in no_requests:
        assert not re.search(pattern, html), pattern


def test_write_page_refuses_directories_and_non_html_files(tmp_path):
    d = E.explore_vit(tiny_vit(), picture(), label="t")
    with pytest.raises(ConfigError, match="is a directory"):
        E.write_page(d, tmp_path)
    good = tmp_path / "weights.safetensors"
    good.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ConfigError, match="not an HTML page"):
        E.write_page(d, good)
    assert good.read_bytes().startswith(b"\x08")
    page = E.write_page(d, tmp_path / "p.html")
    E.write_page(d, page)  # an existing page is replaced
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------------- the command
@pytest.fixture
def image_file(tmp_path):
    arr = np.zeros((40, 50, 3), np.uint8)
    arr[10:30, 15:35] = (220, 40, 30)
    path = tmp_path / "square.png"
    Image.fromarray(arr).save(path)
    return path


def test_cli_vit_by_name_is_labelled_random_init(tmp_path, image_file, capsys):
    out = tmp_path / "vit.html"
    assert main(["viz", "explore", "vit_tiny_patch16_224", str(image_file), "-o", str(out), "--layer", "3", "--head", "1"]) == 0
    data = _page_data(out.read_text(encoding="utf-8"))
    assert data["kind"] == "vit" and data["meta"]["random_init"] is True and data["meta"]["model"] == "vit_tiny_patch16_224"
    assert (data["worked"]["layer"], data["worked"]["head"]) == (3, 1)
    assert "wrote" in capsys.readouterr().out


def test_cli_text_models_with_tokenizer_files(tmp_path, bpe):
    char = train_tokenizer("char", " ".join(CORPUS))
    char.save(tmp_path / "char.json")
    bpe.save(tmp_path / "bpe.json")
    lm_out, mt_out = tmp_path / "lm.html", tmp_path / "mt.html"
    assert main(["viz", "explore", "transformer_lm_char", "a dog runs", "-o", str(lm_out),
                 "--tokenizer", str(tmp_path / "char.json")]) == 0
    assert _page_data(lm_out.read_text(encoding="utf-8"))["text"]["tokens"][:3] == ["a", "·", "d"]
    assert main(["viz", "explore", "transformer_multi30k", "ein hund läuft .", "-o", str(mt_out), "--tokenizer",
                 str(tmp_path / "bpe.json"), "--target", "a dog runs ."]) == 0
    data = _page_data(mt_out.read_text(encoding="utf-8"))
    assert [s["id"] for s in data["sets"]] == ["enc", "dec", "cross"] and data["worked"]["check"] < 1e-5


@pytest.mark.parametrize("fmt", ["timm", "attnlab", "hf"])
def test_cli_vit_weights_from_a_file(tmp_path, image_file, fmt):
    from attnlab.checkpoints import save_checkpoint

    torch.manual_seed(1)
    vit = create_model("vit_mnist").eval()
    path = save_checkpoint(vit, tmp_path / (f"{fmt}.safetensors" if fmt != "hf" else "hf_dir"), format=fmt)
    path = path.parent if fmt == "hf" else path  # a Hugging Face directory (config.json + weights)
    out = tmp_path / "p.html"
    argv = ["vit_mnist", str(image_file), "--weights", str(path)] if fmt == "timm" else [str(path), str(image_file)]
    assert main(["viz", "explore", *argv, "-o", str(out)]) == 0
    data = _page_data(out.read_text(encoding="utf-8"))
    assert data["meta"]["random_init"] is False
    from attnlab.data.images import read_model_images
    from attnlab.data.transforms import Normalize, default_normalization

    # the input the layout's weights expect: Hugging Face's 0.5; timm's and ours fix none (the model's own default)
    norm = Normalize([0.5], [0.5]) if fmt == "hf" else default_normalization(vit)
    ref = E.explore_vit(vit, read_model_images([image_file], vit, convert=True)[0], norm, label="x")
    assert data["sets"][0]["attention"]["q"] == ref["sets"][0]["attention"]["q"]  # the loaded weights, not a fresh init


@pytest.mark.parametrize("argv, message", [
    (["lstm_lm_small", "hello"], "no attention"),
    (["transformer_lm_char", "hello"], "--tokenizer"),
    (["transformer_multi30k", "hello"], "--src-tokenizer"),
    (["vit_tiny_patch16_224", "hello", "--target", "x"], "translation models only"),
    (["no_such_model_xyz", "hello"], "neither a model name"),
])
def test_cli_refuses_in_one_line(tmp_path, capsys, argv, message, image_file):
    argv = [str(image_file) if a == "hello" and argv[0].startswith("vit") else a for a in argv]
    assert main(["viz", "explore", *argv, "-o", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


def test_cli_refuses_a_directory_and_a_non_html_output(tmp_path, capsys, image_file):
    assert main(["viz", "explore", "vit_tiny_patch16_224", str(image_file), "-o", str(tmp_path)]) == 2
    assert main(["viz", "explore", "vit_tiny_patch16_224", str(image_file), "-o", str(image_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "directory" in err[0] and "not an HTML page" in err[1]
    assert Image.open(image_file).size == (50, 40)



# ---------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny trained runs (image, language model, translation), made through the CLI."""
    tmp = tmp_path_factory.mktemp("explore_runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    (tmp / "t.txt").write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    for name, lines in (("train", CORPUS[:20]), ("valid", CORPUS[20:])):
        (tmp / f"{name}.src").write_text("\n".join(lines[0::2]) + "\n", encoding="utf-8")
        (tmp / f"{name}.tgt").write_text("\n".join(lines[1::2]) + "\n", encoding="utf-8")
    common = ["--epochs", "1", "--threads", "1", "--quiet"]
    assert main(["train", "image", "--model", "vit_digits", "--model-arg", "embed_dim=16", "--model-arg", "depth=2",
                 "--model-arg", "num_heads=2", "--batch-size", "256", "--run-dir", str(tmp / "img"), *common]) == 0
    assert main(["train", "lm", "--text", str(tmp / "t.txt"), "--model-arg", "d_model=32", "--model-arg", "num_layers=2",
                 "--model-arg", "num_heads=2", "--window", "16", "--batch-size", "8", "--steps-per-epoch", "5",
                 "--run-dir", str(tmp / "lm"), *common]) == 0
    assert main(["train", "translate", "--src", str(tmp / "train.src"), "--tgt", str(tmp / "train.tgt"), "--valid-src",
                 str(tmp / "valid.src"), "--valid-tgt", str(tmp / "valid.tgt"), "--bpe-vocab-size", "300", "--model-arg",
                 "d_model=32", "--model-arg", "num_heads=2", "--model-arg", "num_encoder_layers=1", "--model-arg",
                 "num_decoder_layers=2", "--model-arg", "d_ff=64", "--max-tokens", "400", "--warmup-steps", "2",
                 "--run-dir", str(tmp / "mt"), *common]) == 0
    torch.set_num_threads(n)
    return tmp


def test_cli_explores_runs(runs, tmp_path, image_file):
    from attnlab import runs as run_layer

    out = tmp_path / "img.html"
    assert main(["viz", "explore", str(runs / "img"), str(image_file), "-o", str(out)]) == 0
    img = _page_data(out.read_text(encoding="utf-8"))
    loaded = run_layer.open(runs / "img")
    assert img["meta"]["random_init"] is False and img["grid"] == list(loaded.model.grid_size)
    assert {p["label"] for p in img["predictions"]} <= {str(x) for x in loaded.extras["labels"]}
    assert main(["viz", "explore", str(runs / "lm"), "to be or", "-o", str(tmp_path / "lm.html")]) == 0
    lm = _page_data((tmp_path / "lm.html").read_text(encoding="utf-8"))
    assert lm["kind"] == "lm" and lm["text"]["tokens"] == ["t", "o", "·", "b", "e", "·", "o", "r"]
    assert main(["viz", "explore", f"{runs / 'mt'}:last", "ein hund läuft .", "-o", str(tmp_path / "mt.html"),
                 "--target", "a dog runs ."]) == 0
    mt = _page_data((tmp_path / "mt.html").read_text(encoding="utf-8"))
    assert mt["text"]["target"][0] == "<s>" and mt["sets"][2]["attention"]["shape"][:2] == [2, 2]
    assert mt["worked"]["check"] < 1e-5


def test_viz_attention_and_the_explorer_name_special_tokens_alike(runs, tmp_path, monkeypatch):
    from attnlab.viz import text

    drawn = {}
    plot = text.plot_alignment
    monkeypatch.setattr(text, "plot_alignment",
                        lambda w, src, tgt, title: drawn.update(src=src, tgt=tgt) or plot(w, src, tgt, title))
    argv = [f"{runs / 'mt'}:last", "ein hund läuft .", "--target", "a dog runs ."]
    assert main(["viz", "attention", *argv, "-o", str(tmp_path / "a.png")]) == 0
    assert main(["viz", "explore", *argv, "-o", str(tmp_path / "mt.html")]) == 0
    page = _page_data((tmp_path / "mt.html").read_text(encoding="utf-8"))["text"]
    assert drawn["src"] == page["source"] and drawn["tgt"] == page["output"]
    assert drawn["src"][-1] == drawn["tgt"][-1] == "</s>"


# ---------------------------------------------------------------------- DETR
def canvas_image() -> torch.Tensor:
    """A digit canvas (uint8 (1, 64, 64)), as the detect task draws them."""
    from attnlab.data.canvases import CanvasConfig, DigitCanvases

    return DigitCanvases(CanvasConfig(), "val").take([0]).images[0]


def tiny_detr(**kw):
    torch.manual_seed(0)
    base = dict(d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=2, d_ff=32)
    return create_model("detr_digits", **{**base, **kw}).eval()


@pytest.fixture(scope="module")
def detr_run(tmp_path_factory):
    """A tiny DETR run trained for 2 steps on 16 canvases through the CLI, and a canvas as a PNG."""
    tmp = tmp_path_factory.mktemp("explore_detr")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(["train", "detect", "--model", "detr_digits", "--dataset", "digits-canvas", "--train-size", "16",
                 "--val-size", "8", "--eval-batch-size", "8", "--pretrain-backbone", "0", "--batch-size", "8",
                 "--warmup-steps", "1", "--model-arg", "d_model=16", "--model-arg", "num_heads=2", "--model-arg",
                 "num_encoder_layers=1", "--model-arg", "num_decoder_layers=2", "--model-arg", "d_ff=32",
                 "--run-dir", str(tmp / "detr"), "--epochs", "1", "--threads", "1", "--quiet"]) == 0
    torch.set_num_threads(n)
    Image.fromarray(canvas_image()[0].numpy()).save(tmp / "canvas.png")
    return tmp


def test_detr_data_are_the_models_numbers(detr_run):
    from attnlab import runs as run_layer
    from attnlab.detect.coco_eval import postprocess

    run = run_layer.open(detr_run / "detr")
    model, img = run.model, canvas_image()
    d = E.explore_detr(model, img, run.extras["normalize"], run.extras["labels"], label="detr", threshold=0.0, worked=(0, 1))
    attns = [model.decoder[0].cross_attn, model.decoder[1].cross_attn, model.encoder[0].self_attn]
    with torch.no_grad(), cached_weights(attns) as calls:  # the reference: each attention's own need_weights path
        out = model(run.extras["normalize"](img[None]))
    n = model.cfg.num_queries
    det = postprocess(out["logits"], out["boxes"], [(64, 64)])[0]
    assert d["kind"] == "detr" and d["grid"] == list(out["feature_size"]) == [8, 8]
    assert sorted(d["shown"]) == list(range(n)) and d["shown"] == det["scores"].argsort(descending=True).tolist()
    for q in d["queries"]:
        i = q["query"]
        assert q["label"] == run.extras["labels"][int(det["labels"][i])]
        assert q["score"] == pytest.approx(float(det["scores"][i]), abs=1e-4)
        assert q["box"] == pytest.approx(det["boxes"][i].tolist(), abs=0.01)
    sets = {s["id"]: s for s in d["sets"]}
    cross, enc = E.unpack_attention(sets["cross"]["attention"]), E.unpack_attention(sets["enc"]["attention"])
    ref_cross = torch.stack([calls[i][0][0] for i in range(2)])[:, :, d["shown"]]  # rows in the page's order
    ref_enc = calls[2][0][:1]
    assert cross.shape == (2, 2, n, 64) and enc.shape == (1, 2, 64, 64) and sets["cross"]["layers"] == [0, 1]
    assert float((cross - ref_cross).abs().max()) <= float(ref_cross.max()) / 510 + 1e-7  # 8 bits of each row
    assert float((enc - ref_enc).abs().max()) <= float(ref_enc.max()) / 510 + 1e-7
    w = d["worked"]  # the worked head: Q from the decoder state + query embedding, K from memory + positions, V from memory
    assert (w["set"], w["layer"], w["head"], w["tq"], w["tk"], w["d_k"]) == ("cross", 0, 1, n, 64, 8)
    torch.testing.assert_close(worked_softmax(w), calls[0][0][0, 1], atol=1e-6, rtol=1e-5)
    assert w["check"] < 1e-6
    assert E.explore_detr(model, img, run.extras["normalize"], run.extras["labels"], label="d", threshold=1.0)["shown"] == \
        d["shown"][:3]  # none confident: the best three, said so


def test_detr_worked_head_value_input_matters():
    model, img = tiny_detr(), canvas_image()
    norm = default_normalization(model)
    d = E.explore_detr(model, img, label="d", threshold=0.0)
    v = floats(d["worked"]["v"], 64, 8)
    mem = model.encode(norm(img[None]))[0][0]
    wv = model.decoder[-1].cross_attn.qkv.weight[32:48][:8]  # head 0's rows of W_V
    bv = model.decoder[-1].cross_attn.qkv.bias[32:48][:8]
    torch.testing.assert_close(v, (mem @ wv.T + bv).detach(), atol=1e-5, rtol=1e-5)  # V from the memory, without positions


def test_deformable_detr_page_has_its_maps_and_no_worked_head():
    """Deformable cross-attention samples points: the page shows its (dense-equivalent) maps, and says why it has
    no worked head instead of failing."""
    model, img = tiny_detr(cross_attention="deformable"), canvas_image()
    d = E.explore_detr(model, img, label="d", threshold=0.0)
    assert d["worked"] is None and any("DeformableAttention" in n for n in d["notes"])


def test_detr_page_keeps_its_budget():
    model, img = tiny_detr(), canvas_image()
    full = E.explore_detr(model, img, label="d", threshold=0.0)
    size = len(E.render_page(full).encode("utf-8"))
    assert size <= E.BUDGET_BYTES and not any("MB" in n for n in full["notes"])
    budget = size - E.packed_bytes([2, 64, 64]) // 2  # not one layer of every encoder head fits any more
    cut = E.explore_detr(model, img, label="d", threshold=0.0, budget=budget)
    assert len(E.render_page(cut).encode("utf-8")) <= budget
    enc = next(s for s in cut["sets"] if s["id"] == "enc")
    assert enc["heads_mean"] and enc["attention"]["shape"][1] == 1 and any("mean of its heads" in n for n in cut["notes"])
    torch.testing.assert_close(E.unpack_attention(enc["attention"])[0, 0],
                               E.unpack_attention(next(s for s in full["sets"] if s["id"] == "enc")["attention"])[0].mean(0),
                               atol=2 / 255, rtol=0)


def test_cli_explores_a_detr_run_and_a_random_detr(detr_run, tmp_path):
    from attnlab import runs as run_layer

    out = tmp_path / "detr.html"
    assert main(["viz", "explore", str(detr_run / "detr"), str(detr_run / "canvas.png"), "-o", str(out),
                 "--threshold", "0.05", "--layer", "1", "--head", "1"]) == 0
    d = _page_data(out.read_text(encoding="utf-8"))
    labels = run_layer.open(detr_run / "detr").extras["labels"]
    assert d["kind"] == "detr" and d["meta"]["random_init"] is False and d["threshold"] == 0.05
    assert {q["label"] for q in d["queries"]} <= set(labels) and (d["worked"]["layer"], d["worked"]["head"]) == (1, 1)
    assert out.stat().st_size <= 3_000_000
    rnd = tmp_path / "random.html"
    assert main(["viz", "explore", "detr_digits", str(detr_run / "canvas.png"), "-o", str(rnd)]) == 0
    d = _page_data(rnd.read_text(encoding="utf-8"))
    assert d["kind"] == "detr" and d["meta"]["random_init"] is True and d["meta"]["model"] == "detr_digits"
    assert [s["attention"]["shape"] for s in d["sets"]] == [[3, 4, len(d["shown"]), 64], [3, 4, 64, 64]]


def test_size_budget_detr_resnet50_at_800():
    """The paper's DETR (6+6 layers, 8 heads, 100 queries, a 25x25 feature map) on a noise picture
    (the worst case for PNG): the page stays under 3 MB and says what it left out."""
    torch.manual_seed(0)
    model = create_model("detr_resnet50").eval()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    d = E.explore_detr(model, torch.randint(0, 256, (3, 800, 800), dtype=torch.uint8), label="detr_resnet50",
                       random_init=True)
    torch.set_num_threads(n)
    size = len(E.render_page(d).encode("utf-8"))
    assert size <= 3_000_000, f"{size / 1e6:.2f} MB > 3 MB"
    assert d["grid"] == [25, 25] and d["worked"]["tq"] == 100 and d["worked"]["check"] < 1e-6
    assert {s["id"]: s["attention"]["shape"][-2:] for s in d["sets"]} == {"cross": [len(d["shown"]), 625], "enc": [625, 625]}
    assert any("512×512 pixels" in n for n in d["notes"]) and all(s["layers"][-1] == 5 for s in d["sets"])
    cross, enc = d["sets"]
    assert cross["layers"] == list(range(6)) and len(enc["layers"]) < 6  # the small cross-attention keeps every layer


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "2"], "must be a probability"),
    (["--layer", "7"], "decoder layer 7 out of range"),
    (["--target", "x"], "translation models only"),
])
def test_cli_detr_refuses_in_one_line(tmp_path, capsys, extra, message):
    img = tmp_path / "canvas.png"
    Image.fromarray(canvas_image()[0].numpy()).save(img)
    assert main(["viz", "explore", "detr_digits", str(img), "-o", str(tmp_path / "x.html"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.html").exists()
