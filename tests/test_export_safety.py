"""Exports under abuse: all-or-nothing multi-graph sets (a killed export, a torn set), the
record that tells attnlab's graphs from other files, garbage given to load_graph, and crafted
.pt2 archives that would run code when loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from attnlab.errors import DataError
from attnlab.export import export_model, graph, load_graph
from attnlab.export.formats import read_export_record
from test_export import need_onnx, tiny_vit, translation_model

STAGING = f"{graph.STAGING_PREFIX}*.tmp"


def hashes(paths) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.match(STAGING))


# ---------------------------------------------------------------------- all or nothing
# The export of a small translation model, killed (os._exit, as SIGKILL: no cleanup runs) while
# its second graph, the decoder, is being written.
KILLED_EXPORT = """
import os, sys
from attnlab.export import export_model, {fmt} as adapter
from attnlab.models.seq2seq import transformer_multi30k

model = transformer_multi30k(src_vocab_size=50, tgt_vocab_size=50, num_encoder_layers=1, num_decoder_layers=1,
                             d_model=32, num_heads=4, d_ff=64).eval()
save, written = adapter.save_{fmt}, []

def killed_at_the_second_graph(*args, **kwargs):
    written.append(args)
    if len(written) == 2:
        os._exit(9)
    save(*args, **kwargs)

adapter.save_{fmt} = killed_at_the_second_graph
export_model(model, sys.argv[1])
"""


@pytest.mark.parametrize("fmt,previous", [("pt2", True), ("onnx", True), ("pt2", False)],
                         ids=["pt2-over-an-export", "onnx-over-an-export", "pt2-fresh-folder"])
def test_killed_export_leaves_the_previous_set_whole_and_the_next_export_cleans_up(tmp_path, fmt, previous):
    need_onnx(fmt)
    target = tmp_path / f"mt.{fmt}"
    old = export_model(translation_model(), target) if previous else []
    before = hashes(old), visible(tmp_path)
    p = subprocess.run([sys.executable, "-c", KILLED_EXPORT.format(fmt=fmt), str(target)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 9, p.stderr
    assert p.stderr == ""  # no library noise on the way
    assert (hashes(old), visible(tmp_path)) == before  # the old pair, or nothing: no new encoder
    [stale] = tmp_path.glob(STAGING)
    for path in old:
        load_graph(path)  # still one export's set
    export_model(translation_model(), target)
    assert not stale.exists() and not list(tmp_path.glob(STAGING))


def test_loader_refuses_a_torn_set(tmp_path, monkeypatch):
    """Interrupted between the renames that move a set in: the new encoder beside the old decoder
    (each a valid graph) is refused by the loader, as is a lone encoder."""
    m = translation_model()
    encoder, decoder = export_model(m, tmp_path / "mt.pt2")
    replace, moved = os.replace, []

    def interrupted_after_the_first(src, dst):
        moved.append(dst)
        if len(moved) == 2:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        export_model(m, tmp_path / "mt.pt2")
    monkeypatch.undo()
    for path in (encoder, decoder):
        with pytest.raises(DataError, match="comes from another export .*export again"):
            load_graph(path)
    decoder.unlink()
    with pytest.raises(DataError, match=r"mt.decoder.pt2, which is missing"):
        load_graph(encoder)


def test_every_graph_records_one_export_id_and_other_programs_have_none(tmp_path):
    records = [read_export_record(p) for p in export_model(translation_model(), tmp_path / "mt.pt2")]
    assert [r["graph"] for r in records] == ["encoder", "decoder"] and records[0]["graphs"] == ["encoder", "decoder"]
    assert records[0]["export_id"] == records[1]["export_id"] and records[0]["version"] == graph.RECORD_VERSION
    [g] = graph.graphs_of(tiny_vit())
    torch.export.save(graph.export_program(g), tmp_path / "by-torch.pt2")  # a valid program, not written by attnlab
    assert read_export_record(tmp_path / "by-torch.pt2") is None


# ---------------------------------------------------------------------- garbage in
def random_bytes(path):
    path.write_bytes(os.urandom(4096))
    return path


def garbage_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/notes.json", "{}")
    return path


@pytest.mark.parametrize("make", [
    lambda t: random_bytes(t / "r.pt2"),
    lambda t: random_bytes(t / "r.onnx"),
    lambda t: garbage_zip(t / "z.pt2"),
], ids=["random-pt2", "random-onnx", "zip-of-json-pt2"])
def test_load_graph_on_garbage_is_one_attnlab_error_without_log_noise(tmp_path, make, caplog, capfd):
    path = make(tmp_path)
    if path.suffix == ".onnx":
        need_onnx("onnx")
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as e:
        load_graph(path)
    assert str(path) in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not caplog.records and capfd.readouterr().err == ""


# ---------------------------------------------------------------------- untrusted .pt2 archives
class CreatesFile:
    """Unpickling this creates ``path``: the stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def rewritten(src: Path, dst: Path, edit) -> Path:
    """A copy of the archive ``src`` with ``edit(name inside the archive, bytes) -> bytes`` applied."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, edit(info.filename.split("/", 1)[1], z.read(info.filename)))
    return dst


def pickled_weight(marker):
    def edit(name, data):
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True  # weight_0
            return json.dumps(config).encode()
        return pickle.dumps(CreatesFile(marker)) if name == "data/weights/weight_0" else data
    return edit


def pickled_sample_inputs(marker):
    return lambda name, data: pickle.dumps(CreatesFile(marker)) if name == "data/sample_inputs/model.pt" else data


def program(change):
    def edit(name, data):
        if name != "models/model.json":
            return data
        p = json.loads(data)
        change(p)
        return json.dumps(p).encode()
    return edit


def shape_guard(marker):  # torch execs the guards as Python when the module is called
    return program(lambda p: p.update(guards_code=[f"open({str(marker)!r}, 'w').close() is None"]))


def symbolic_shape(marker):  # torch gives expr_str to sympy.sympify, which evaluates it
    def change(p):
        first = next(d for d in walk(p) if "expr_str" in d)
        first["expr_str"] = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return program(change)


def walk(obj):
    if isinstance(obj, dict):
        yield obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            yield from walk(v)


@pytest.fixture(scope="module")
def fp32_pt2(tmp_path_factory):
    return export_model(tiny_vit(), tmp_path_factory.mktemp("pt2") / "vit.pt2")[0]


@pytest.mark.parametrize("craft,reason", [
    (pickled_weight, r"pickles Python objects besides tensors \(data/weights/weight_0\)"),
    (pickled_sample_inputs, r"pickles Python objects besides tensors \(data/sample_inputs/model.pt\)"),
    (shape_guard, "has a shape guard that is not a plain comparison"),
    (symbolic_shape, "has a symbolic shape that is not a plain expression"),
], ids=["pickled-weight", "pickled-sample-inputs", "guard-code", "sympify-string"])
def test_crafted_pt2_is_refused_before_anything_in_it_runs(fp32_pt2, tmp_path, craft, reason):
    marker = tmp_path / "the-archive-ran-code"
    crafted = rewritten(fp32_pt2, tmp_path / "crafted.pt2", craft(marker))
    with pytest.raises(DataError, match=f"crafted.pt2 is not trusted: it {reason}.*nothing in it was run"):
        load_graph(crafted)(torch.randn(2, 3, 32, 32))  # called too: guards run at the first call
    assert not marker.exists()


def test_a_target_that_is_not_an_operator_is_refused(fp32_pt2, tmp_path):
    """Node targets are resolved by name from torch's namespace; only operator overloads pass
    (torch's own verifier would also stop this one, after deserializing; not higher-order operators)."""
    def change(p):
        p["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
    with pytest.raises(DataError, match="calls 'torch.os.system', which is not a tensor operator"):
        load_graph(rewritten(fp32_pt2, tmp_path / "crafted.pt2", program(change)))


def test_trusted_loads_what_the_check_refuses(fp32_pt2, tmp_path):
    """A harmless guard that is not a plain comparison: refused by default, run with trusted=True."""
    crafted = rewritten(fp32_pt2, tmp_path / "guard.pt2", program(lambda p: p.update(guards_code=["len('ab') == 2"])))
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(DataError, match="not trusted"):
        load_graph(crafted)
    assert torch.equal(load_graph(crafted, trusted=True)(x)[0], load_graph(fp32_pt2)(x)[0])


def test_our_int8_programs_load_untrusted(tmp_path):
    """attnlab's int8 .pt2 pickles torchao's int8 weights (use_pickle): torch's weights-only
    unpickler accepts them, so they load without trusted=True."""
    pytest.importorskip("torchao")
    m = tiny_vit()
    [path] = export_model(m, tmp_path / "q.pt2", int8=True)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read(next(n for n in z.namelist() if n.endswith("model_weights_config.json"))))
    assert any(p["use_pickle"] for p in config["config"].values())
    x = torch.randn(3, 3, 32, 32)
    assert (load_graph(path)(x)[0] - m(x)).abs().max() < 0.1
