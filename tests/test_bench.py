"""The benchmark scripts run end to end on the library's current API, with tiny settings and
tiny synthetic data (their real runs take minutes to hours), and write nothing with --no-write."""

import gzip
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat and the dog ran to the park while a bird sang".split()


def bench(name: str):
    """A bench script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def committed_outputs() -> dict:
    files = [ROOT / "BENCHMARKS.md", *sorted((ROOT / "bench" / "results").glob("*.json"))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}


def sentences(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) for _ in range(n)]


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """$ATTNLAB_DATA with a tiny tinyshakespeare/input.txt and ptb/*.gz."""
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("\n".join(sentences(300, 0)))
    (tmp_path / "ptb").mkdir()
    for seed, (split, n) in enumerate((("train", 200), ("valid", 30), ("test", 30))):
        with gzip.open(tmp_path / "ptb" / f"ptb.{split}.txt.gz", "wt") as f:
            f.write("\n".join(sentences(n, seed)) + "\n")
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path))
    return tmp_path


def test_lm_bench_trains_registry_models(tiny_data, tmp_path, capsys, one_thread):
    before = committed_outputs()
    lm = bench("lm")
    lm.main(["--threads", "1", "--no-write", "shakespeare", "--budget", "0.3", "--models", "transformer", "lstm"])
    lm.main(["--threads", "1", "--no-write", "ptb", "--models", "lstm", "--epochs", "1", "--batch", "4", "--bptt", "8",
             "--runs", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    for name in ("transformer", "lstm"):
        line = next(s for s in out.splitlines() if s.startswith(f"{name}: ") and "val loss" in s)
        assert float(line.split("val loss ")[1].split()[0]) > 0
    assert "lstm: test perplexity" in out
    run = json.loads((tmp_path / "runs" / "bench-ptb-lstm" / "run.json").read_text())
    assert run["model"]["name"] == "lstm_lm_small"
    assert (run["model"]["config"]["hidden_dim"], run["model"]["config"]["tie_weights"]) == (200, True)
    assert committed_outputs() == before  # --no-write


def test_lm_bench_models_are_the_recorded_ones():
    """The registry names and overrides build the configurations of the recorded rows (their parameter counts)."""
    from attnlab.models.registry import count_parameters, create_model

    lm = bench("lm")
    recorded = {"transformer": 809_856, "lstm": 835_585, "gru": 822_849, "rnn": 862_913}  # vocabulary 65, window 64
    for name, (model, args) in lm.SHAKESPEARE_MODELS.items():
        extra = {"max_len": 64, "position": "learned"} if name == "transformer" else {}
        assert count_parameters(create_model(model, vocab_size=65, **args, **extra)) == recorded[name], name
    model, args = lm.PTB_MODELS["lstm"]
    assert count_parameters(create_model(model, vocab_size=10_000, **args, tie_weights=True)) == 2_653_200


def test_train_image_bench_on_digits(tmp_path, capsys, one_thread):
    from attnlab import runs

    bench("train_image").main(["mnist", "--epochs", "1", "--dataset", "digits", "--out", str(tmp_path), "--threads", "1"])
    res = json.loads((tmp_path / "bench-mnist-digits.json").read_text())
    assert res["runs"]["ours"]["parameters"] == 539_914  # the MNIST recipe's 0.54M
    assert 0.0 <= res["runs"]["ours"]["final_acc"] <= 1.0
    assert runs.open(tmp_path / "bench-mnist-digits-ours").name == "vit_cifar"  # a run every command reads
    assert (tmp_path / "bench-mnist-digits-ours" / "curves.png").exists()  # the run layer's pictures, drawn here too
    assert "| ours | vit_cifar | 1 |" in capsys.readouterr().out


def test_translate_bench_rewrites_old_model_options():
    t = bench("translate")
    old = ("python bench/translate.py multi30k --model gru-attention -- --bpe-vocab-size 6000 --embed-dim 256 --hidden-dim 128 "
           "--dropout 0.2 --lr 2e-3")
    assert t.current_command(old) == (
        "python bench/translate.py multi30k --model gru-attention -- --bpe-vocab-size 6000 --model-arg embed_dim=256 "
        "--model-arg hidden_dim=128 --model-arg attn_dim=128 --model-arg dropout=0.2 --lr 2e-3")
    assert t.current_command("python bench/translate.py multi30k -- --model-arg d_model=64 --num-layers 2").endswith(
        "--model-arg num_encoder_layers=2 --model-arg num_decoder_layers=2")
    assert t.current_command("python bench/translate.py multi30k -- --model-arg d_model=64 --lr 1e-3") is None


def test_translate_bench_multi30k_tiny(tmp_path, monkeypatch, capsys, one_thread):
    data = tmp_path / "m30k"
    data.mkdir()
    for seed, (split, n) in enumerate((("train", 120), ("val", 12), ("test_2016_flickr", 8))):
        for lang in ("de", "en"):  # a copy task: the same sentences on both sides
            with gzip.open(data / f"{split}.{lang}.gz", "wt") as f:
                f.write("\n".join(sentences(n, seed)) + "\n")
    before = committed_outputs()
    monkeypatch.setattr(sys, "argv", [
        "bench/translate.py", "multi30k", "--model", "transformer", "--minutes", "1", "--beam", "2", "--data", str(data),
        "--out", str(tmp_path / "runs"), "--no-write", "--", "--bpe-vocab-size", "300", "--max-tokens", "256",
        "--model-arg", "d_model=16", "--model-arg", "num_heads=2", "--model-arg", "num_encoder_layers=1",
        "--model-arg", "num_decoder_layers=1", "--model-arg", "d_ff=32", "--epochs", "1", "--warmup-steps", "1",
        "--threads", "1"])
    t = bench("translate")

    def in_process(cmd: list[str]) -> str:  # the same attnlab command lines, without a new interpreter each
        import contextlib
        import io

        from attnlab.cli.main import main

        assert cmd[1:3] == ["-m", "attnlab"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(cmd[3:]) == 0, cmd
        return out.getvalue()

    monkeypatch.setattr(t, "run", in_process)
    t.main()
    out = capsys.readouterr().out
    row = next(s for s in out.splitlines() if s.startswith("| de-en | transformer |") and "--max-tokens 256" in s)
    assert row.split(" | ")[3] == "1"  # epochs, counted from the run's metrics.json
    run = json.loads((tmp_path / "runs" / "multi30k-de-en-transformer" / "run.json").read_text())
    assert run["model"]["name"] == "transformer_multi30k" and run["model"]["config"]["d_model"] == 16
    assert committed_outputs() == before  # --no-write


def test_deploy_bench_vit_rows_per_int8_backend(capsys, one_thread):
    """bench/deploy.py's ViT part on a small model: one row per int8 backend, the processor and
    the backend --int8 picks on it recorded, and the table renders (BENCHMARKS.md untouched)."""
    pytest.importorskip("timm")
    pytest.importorskip("torchao")
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod)
    deploy = bench("deploy")
    before = committed_outputs()
    assert deploy.main(["vit", "--model", "vit_tiny_patch16_224", "--rounds", "1", "--no-compile", "--no-write"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"attnlab int8 eager, torchao", "attnlab int8 eager, fbgemm"} <= set(res["rows"])
    assert res["cpu"]["capability"] and res["cpu"]["model"] in res["machine"]
    assert res["int8_backend"] in ("torchao", "fbgemm", None) and "int8" in res["int8_choice"]
    assert all(d < 0.5 for d in res["max_abs_diff_vs_timm"].values())
    text = deploy.render({"vit": res})
    assert "attnlab int8 eager, fbgemm" in text and res["int8_choice"] in text
    assert committed_outputs() == before


def test_train_image_ablation_trains_every_row_on_the_same_data(tmp_path, capsys, one_thread):
    """issue 23's side-by-side table at toy size: every row trains, and each row's model is the one its
    recipe names (a row that silently trained another model would pass a shape check)."""
    from attnlab import runs
    from test_compact_cli import cifar_folder

    data = cifar_folder(tmp_path / "cifar", per_class=13, test_per_class=1)
    mod = bench("train_image")
    mod.main(["ablation", "--epochs", "1", "--dataset", f"folder:{data}", "--out", str(tmp_path), "--threads", "1"])
    res = json.loads((tmp_path / "bench-ablation-folder.json").read_text())
    assert list(res["runs"]) == list(mod.ABLATION)
    for row, name in mod.ABLATION.items():
        r = res["runs"][row]
        model = runs.open(tmp_path / f"bench-ablation-folder-{name}").model
        assert r["model"] == mod.RECIPES[name]["model"] == model.name
        assert r["epochs"] == 1 and 0.0 <= r["final_acc"] <= 1.0
    cct = runs.open(tmp_path / "bench-ablation-folder-cifar10-cct").model
    assert cct.cfg.tokenizer == "conv" and cct.cfg.seq_pool
    assert runs.open(tmp_path / "bench-ablation-folder-cifar10-cct-patches").model.cfg.tokenizer == "patch"
    assert not runs.open(tmp_path / "bench-ablation-folder-cifar10-cct-token").model.cfg.seq_pool
    ms = {row: r["augment_ms_per_batch"] for row, r in res["runs"].items()}
    assert ms["- augmentation"] == 0.0 < ms["compact (CCT-4/3x2)"]
    vit = runs.open(tmp_path / "bench-ablation-folder-cifar10-spt-lsa").model
    assert vit.cfg.spt and vit.cfg.lsa
    assert "| ResNet-8 | resnet_cifar_small | 1 |" in capsys.readouterr().out
