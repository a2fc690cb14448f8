"""Graph capture of the models: torch.fx symbolic tracing (timm's FX feature extraction relies
on it), torch.export programs (.pt2) and ONNX, each checked against the eager outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

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
FX_VARIANTS = [*VIT_VARIANTS, {"pos_embed": "learn2d"}, {"pos_embed": "rope2d"}]


@pytest.mark.parametrize("variant", FX_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
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
    pairs = m.forward_intermediates(x, [0, 1], output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
    want = [torch.cat([prefix, tokens], 1) for tokens, prefix in pairs]  # each block's whole output (B, N, C)
    nodes = {"blocks.0": "b0", "blocks.1": "b1"}
    for create in (fe_tv.create_feature_extractor, timm_fx.create_feature_extractor):
        got = create(m, return_nodes=nodes)(x)
        assert torch.equal(got["b0"], want[0]) and torch.equal(got["b1"], want[1])


# ---------------------------------------------------------------------- .pt2 and ONNX
from attnlab.export import export_model, greedy_decode, load_graph, self_cache_zeros  # noqa: E402
from attnlab.export.graph import export_program, graphs_of  # noqa: E402

TOL = 1e-4


def need_onnx(fmt):
    if fmt == "onnx":
        for mod in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(mod, reason=f"ONNX export needs {mod}: pip install 'attnlab[export]'")


def max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_vit_export_matches_eager_at_batch_1_3_8(tmp_path, fmt):
    need_onnx(fmt)
    m = tiny_vit()
    [path] = export_model(m, tmp_path / f"vit.{fmt}")
    run = load_graph(path)
    for b in (1, 3, 8):
        x = torch.randn(b, 3, 32, 32)
        (y,) = run(x)
        assert max_err(y, m(x)) < TOL


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_vit_dynamic_img_size_graph_takes_other_sizes(tmp_path, fmt):
    """A dynamic_img_size model's graph takes any multiple of the patch size; off its own grid the
    learned position embeddings are resampled in the graph (antialiased bicubic, which ONNX Runtime
    reproduces)."""
    need_onnx(fmt)
    m = tiny_vit(dynamic_img_size=True)
    [path] = export_model(m, tmp_path / f"vit.{fmt}")
    run = load_graph(path)
    for b, (h, w) in [(1, (32, 32)), (3, (48, 40)), (8, (24, 64))]:
        x = torch.randn(b, 3, h, w)
        assert max_err(run(x)[0], m(x)) < TOL


@pytest.mark.parametrize("name", attnlab.list_models("vit_*"))
def test_every_registered_vit_exports(name):
    """Every registered size, at its real width, patch and image size, one block deep (to stay quick)."""
    torch.manual_seed(0)
    m = attnlab.create_model(name, depth=1).eval()
    [g] = graphs_of(m)
    program = export_program(g).module()
    x = torch.randn(3, *g.args[0].shape[1:])
    with torch.no_grad():
        assert max_err(program(x), m(x)) < TOL


def test_onnx_weights_over_the_limit_go_to_a_data_file(tmp_path, monkeypatch):
    """Large models (ViT-H/14 holds 2.5 GB of fp32 weights; protobuf caps a file at 2 GB) keep
    their weights in <file>.data beside the .onnx file; ONNX Runtime reads them from there."""
    from attnlab.export import onnx

    need_onnx("onnx")
    monkeypatch.setattr(onnx, "ONNX_INLINE_LIMIT", 0)
    m = tiny_vit()
    for name, int8 in (("f.onnx", False), ("q.onnx", True)):
        [path] = export_model(m, tmp_path / name, int8=int8)
        assert (tmp_path / f"{name}.data").stat().st_size > path.stat().st_size
        x = torch.randn(3, 3, 32, 32)
        assert max_err(load_graph(path)(x)[0], m(x)) < (0.05 if int8 else TOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "f.onnx.data", "q.onnx", "q.onnx.data"]


def lm(kind):
    from attnlab.models.lm import RecurrentLMConfig, TransformerLMConfig, build_lm

    torch.manual_seed(0)
    if kind == "transformer":
        return build_lm(TransformerLMConfig(vocab_size=40, d_model=32, num_layers=2, num_heads=4, max_len=16)).eval()
    return build_lm(RecurrentLMConfig(cell=kind, vocab_size=40, embed_dim=16, hidden_dim=24)).eval()


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("kind", ["transformer", "lstm", "gru"])
def test_lm_window_export_matches_eager(tmp_path, fmt, kind):
    need_onnx(fmt)
    m = lm(kind)
    paths = export_model(m, tmp_path / f"lm.{fmt}", window=12)
    assert [p.name for p in paths] == [f"lm.{fmt}"] + ([f"lm.step.{fmt}"] if kind == "transformer" else [])
    run = load_graph(paths[0])
    # a Transformer's graph takes any window up to its context; a recurrent one its fixed window
    shapes = [(1, 12), (3, 12), (8, 12)] + ([(3, 5), (8, 16)] if kind == "transformer" else [])
    for b, t in shapes:
        idx = torch.randint(0, 40, (b, t))
        ref = m(idx)
        ref = ref[0] if isinstance(ref, tuple) else ref
        assert max_err(run(idx)[0], ref) < TOL


@pytest.mark.parametrize("fmt,position", [("pt2", "learned"), ("onnx", "rotary")])
def test_lm_step_graph_generates_like_eager(tmp_path, fmt, position):
    """The exported step (key/value cache as inputs/outputs) gives the eager greedy continuation exactly."""
    from attnlab.decode.sampling import generate
    from attnlab.export import greedy_generate, lm_cache_zeros
    from attnlab.models.lm import TransformerLMConfig, build_lm

    need_onnx(fmt)
    torch.manual_seed(0)
    m = build_lm(TransformerLMConfig(vocab_size=40, d_model=32, num_layers=2, num_heads=4, max_len=32, position=position)).eval()
    torch.nn.init.normal_(m.embed.weight, std=1.0)  # varied continuations, not one repeated token
    step = load_graph(export_model(m, tmp_path / f"lm.{fmt}")[1])
    for b in (1, 3, 8):
        prompt = torch.randint(0, 40, (b, 5), generator=torch.Generator().manual_seed(b))
        want = generate(m.stepper(), prompt, 20, temperature=0)
        assert torch.equal(greedy_generate(step, prompt, 20, lm_cache_zeros(m, b), m.cfg.max_len), want)
    assert len(set(want[:, 5:].flatten().tolist())) > 2


def translation_model():
    from attnlab.models.seq2seq import transformer_multi30k

    torch.manual_seed(0)
    m = transformer_multi30k(src_vocab_size=50, tgt_vocab_size=50, num_encoder_layers=2, num_decoder_layers=2, d_model=32,
                             num_heads=4, d_ff=64, tie_output=False).eval()
    torch.nn.init.normal_(m.out.weight, std=1.0)  # varied greedy outputs, not one repeated token
    return m


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_seq2seq_exported_pieces_decode_like_eager(tmp_path, fmt):
    """The exported encoder + decoder step (key/value cache as inputs/outputs) give the eager
    greedy tokens exactly, at batch 1, 3 and 8 with padded sources, and the step's logits within 1e-4."""
    from attnlab.decode.search import greedy_search

    need_onnx(fmt)
    m = translation_model()
    enc_path, step_path = export_model(m, tmp_path / f"mt.{fmt}")
    assert (enc_path.name, step_path.name) == (f"mt.encoder.{fmt}", f"mt.decoder.{fmt}")
    encoder, step = load_graph(enc_path), load_graph(step_path)
    g = torch.Generator().manual_seed(1)
    seen = set()
    for b in (1, 3, 8):
        src = torch.randint(3, 50, (b, 7), generator=g)
        src[b // 2, 4:] = 0  # padding
        want = greedy_search(m, src, max_len_b=12)
        got = greedy_decode(encoder, step, src, self_cache_zeros(m, b), max_len_b=12)
        assert got == want
        seen |= {t for row in want for t in row}
    assert len(seen) > 3  # varied outputs, not one repeated token
    # one step, compared with the eager model's cached step
    mask, ck, cv = encoder(src)
    sk, sv = self_cache_zeros(m, 8)
    tok = torch.full((8, 1), 1)
    logits, sk, sv = step(tok, mask, sk, sv, ck, cv)
    logits2, _, _ = step(logits.argmax(-1, keepdim=True), mask, sk, sv, ck, cv)
    memory, _ = m.encode(src)
    with torch.no_grad():
        full = m.decode(torch.cat([tok, logits.argmax(-1, keepdim=True)], 1), memory, m.src_mask(src))
    assert max_err(logits, full[:, 0]) < TOL and max_err(logits2, full[:, 1]) < TOL


# ---------------------------------------------------------------------- attnlab export
from attnlab.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def image_run(tiny_image_run, tmp_path_factory):
    """A copy of the session's tiny image run: these tests export into it."""
    d = tmp_path_factory.mktemp("export_run") / "img"
    shutil.copytree(tiny_image_run, d)
    return d


def test_cli_export_run_pt2_and_onnx(image_run, capsys):
    from attnlab import runs

    model = runs.open(image_run).model
    x = torch.randn(3, 1, 8, 8)
    assert main(["export", str(image_run), "--format", "pt2"]) == 0
    out = image_run / "export" / "vit_digits.pt2"
    printed = capsys.readouterr().out
    assert str(out) in printed and "input: images (B, 1, H, W) float32, 8x8, grey; x / 255" in printed
    graph = load_graph(out)
    assert max_err(graph(x)[0], model(x)) < TOL  # the run's trained weights, not fresh ones
    mean = [round(float(v), 6) for v in runs.open(image_run).extras["normalize"].mean]
    assert graph.inputs["mean"] == mean and graph.inputs["normalization"] == "the run's"  # stored in the file
    assert main(["export", str(image_run), "--format", "pt2"]) == 0  # an existing export is replaced
    need_onnx("onnx")
    assert main(["export", str(image_run), "--int8", "-o", str(image_run / "q.onnx")]) == 0
    assert "q.onnx" in capsys.readouterr().out
    onnx_graph = load_graph(image_run / "q.onnx")
    (y,) = onnx_graph(x)
    assert y.shape == (3, 10) and (y.argmax(-1) == model(x).argmax(-1)).float().mean() >= 2 / 3
    assert onnx_graph.inputs == graph.inputs  # ONNX metadata_props hold the same description


def test_cli_export_model_name(tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert main(["export", "vit_digits", "-o", str(out), "--model-arg", "depth=1"]) == 0  # format from the suffix
    assert out.is_file() and "m.pt2" in capsys.readouterr().out



def test_a_new_export_format_is_one_adapter_in_the_table(tmp_path, monkeypatch, capsys):
    """The CLI knows formats only through attnlab.export.formats.FORMATS: an adapter added there is
    offered by --format, chosen by its suffix, checked, written and verified."""
    from attnlab.export import formats
    from attnlab.export.adapter import ExportFormat, Written

    calls = []

    class Toy(ExportFormat):
        name, suffix, supports = "toy", ".toy", "a test format"

        def check(self, model, path, options):
            calls.append("check")

        def write(self, model, path, options):
            calls.append("write")
            path.write_text(repr(options.inputs))
            return [path]

        def verify(self, model, written, options):
            return [Written(p, 0.0, "toy check") for p in written]

    monkeypatch.setitem(formats.FORMATS, "toy", Toy())
    out = tmp_path / "m.toy"
    assert main(["export", "vit_digits", "--model-arg", "depth=1", "-o", str(out)]) == 0
    assert calls == ["check", "write"] and "'mean': [0.0]" in out.read_text()
    assert f"{out}  0.0 MiB  (toy check)" in capsys.readouterr().out

# A program run as `attnlab ...` with torchvision hidden, as in the demo environment (torch alone):
# find_spec says it is missing and importing it fails.
WITHOUT_TORCHVISION = """
import importlib.abc, importlib.util, sys
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "torchvision" else find_spec(name, *a)
class NoTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torchvision":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorchvision())
from attnlab.cli.main import main
sys.argv = ["attnlab", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt, int8", [("onnx", False), ("pt2", True)])
def test_export_prints_only_attnlab_lines(image_run, tmp_path, fmt, int8):
    """Without torchvision the ONNX exporter logs 'Skipping torchvision::nms' (and three more);
    torchao and torch.export have their own notices. The user sees our two lines only: what is
    exported, the file written and the input it expects; nothing on stderr."""
    import subprocess
    import sys

    need_onnx(fmt)
    out = tmp_path / f"m.{fmt}"
    cmd = [sys.executable, "-c", WITHOUT_TORCHVISION, "export", str(image_run), "-o", str(out), *(["--int8"] if int8 else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"exporting vit_digits to {fmt}{' (int8)' if int8 else ''} ..." and len(lines) == 3
    assert lines[1].startswith(f"{out}  "), lines
    assert lines[2].startswith("  ") and "8x8, grey" in lines[2], lines  # what the graph expects as input

# The train commands' bad-input helpers: one line, non-zero exit, no traceback; folders hashed.
from test_cli_image import assert_one_line_error, cli, snapshot  # noqa: E402


def text_file(path):
    path.write_text("my notes")
    return path


def zip_with_json(path):
    """A zip holding a .json member: what the export check took for an export before it read our record."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes/models/model.json", "{}")
    return path


def foreign_onnx(path):
    """A valid ONNX model that attnlab did not write."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])), path)
    return path


BAD_EXPORTS = {  # name -> (arguments after "export" given a folder and a run, the line's pattern)
    "a text file as target": (lambda t, r: ["vit_digits", "-o", text_file(t / "a.pt2")], "was not exported by attnlab"),
    "a zip holding json as target": (lambda t, r: ["vit_digits", "-o", zip_with_json(t / "a.pt2")],
                                     "was not exported by attnlab"),
    "an ONNX model not ours as target": (lambda t, r: ["vit_digits", "-o", foreign_onnx(t / "a.onnx")],
                                         "was not exported by attnlab"),
    "a directory as target": (lambda t, r: ["vit_digits", "--format", "pt2", "-o", t], "is a directory"),
    "suffix of another format": (lambda t, r: ["vit_digits", "--format", "onnx", "-o", t / "m.pt2"], "must end in .onnx"),
    "unknown suffix": (lambda t, r: ["vit_digits", "-o", t / "m.bin"], "cannot tell the format"),
    "unknown model": (lambda t, r: ["no_such_model", "-o", t / "m.pt2"], "neither a model name"),
    "huge image size": (lambda t, r: ["vit_digits", "--model-arg", "img_size=100000", "-o", t / "m.pt2"],
                        r"holds [\d.]+ GiB of weights .* this machine has \d+ GiB"),
    "huge recurrent window": (lambda t, r: ["rnn_lm_small", "--window", "100000", "-o", t / "m.pt2"],
                              "too long for a recurrent model's graph.*at most 1024"),
    "--model-arg for a run": (lambda t, r: [r, "--model-arg", "depth=2", "-o", t / "m.pt2"], "drop --model-arg"),
}


@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_bad_export_input_is_one_line_and_changes_nothing(case, image_run, tmp_path):
    make_args, pattern = BAD_EXPORTS[case]
    argv = make_args(tmp_path, image_run)
    before = snapshot(tmp_path), snapshot(image_run)
    assert_one_line_error(*cli("export", *argv), pattern)
    assert (snapshot(tmp_path), snapshot(image_run)) == before


def test_unwritable_folder_is_refused_before_exporting_naming_the_users_path(tmp_path, monkeypatch):
    """A read-only folder (simulated: this suite may run as root, which writes anywhere) is found
    before any tracing, and the line names the user's path, not a temporary one."""
    import os

    from attnlab.export import pt2

    ro = tmp_path / "ro"
    ro.mkdir()
    mkdir, open_ = os.mkdir, os.open

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: denied(p) if Path(p).parent == ro else mkdir(p, *a, **k))
    monkeypatch.setattr(os, "open", lambda p, flags, *a, **k: denied(p) if Path(p).parent == ro and flags & os.O_CREAT
                        else open_(p, flags, *a, **k))
    traced = []
    monkeypatch.setattr(pt2, "export_program", lambda g: traced.append(g))
    code, out, err = cli("export", "vit_digits", "--model-arg", "depth=1", "-o", ro / "m.pt2")
    assert_one_line_error(code, out, err, f"cannot write {ro / 'm.pt2'}: Permission denied")
    assert ".tmp" not in err and not traced and list(ro.iterdir()) == []
