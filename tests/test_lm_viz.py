"""Gradient norms through time and the copy task (attnlab viz gradients)."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.cli.main import main
from attnlab.models.lm import build_lm, lm_config
from attnlab.viz.gradients import _recurrent_hidden_states, copy_batch, gradient_norms, text_windows

pytestmark = pytest.mark.usefixtures("one_thread")

def _model(kind, vocab=12):
    extra = {"d_model": 32, "num_heads": 4, "max_len": 64} if kind == "transformer" else {"hidden_dim": 16, "embed_dim": 16}
    return build_lm(lm_config(kind, vocab_size=vocab, **extra))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_stepped_hidden_states_equal_the_full_pass(cell):
    m = _model(cell).eval()
    x = torch.randint(0, 12, (3, 9))
    hs = torch.stack(_recurrent_hidden_states(m, x), 1)
    out, _ = m.rnn(m.embed(x))
    torch.testing.assert_close(hs, out, atol=1e-6, rtol=1e-5)


def test_gradient_at_distance_zero_by_hand():
    m = _model("gru").eval()
    w = torch.randint(0, 12, (2, 11))
    norms = gradient_norms(m, w, "hidden")
    assert norms.shape == (10,)
    out, _ = m(w[:, :-1])
    p = out[:, -1].softmax(-1) - F.one_hot(w[:, -1], 12)
    expected = (p @ m.head.weight).norm(dim=-1).mean()  # d loss / d h_T = W_outᵀ (softmax - onehot)
    assert float(norms[0]) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_recurrent_gradients_vanish_and_attention_reaches_back():
    ids = torch.randint(0, 12, (300,))
    w = text_windows(ids, 40, 4)
    rnn = gradient_norms(_model("rnn"), w)
    tr = gradient_norms(_model("transformer"), w)
    assert rnn[-1] < 1e-6 * rnn[0]  # geometric decay over 40 steps
    assert tr[-1] > 1e-2 * tr[1]  # one attention step from every position


def test_copy_batch():  # training on it: the rnn-forgetting experiment (tests/test_experiments.py)
    x, y = copy_batch(4, 3, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == (4, 8) and (y[:, :3] == -100).all() and torch.equal(y[:, 3:], x[:, :5])


def test_viz_gradients_command(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("a quick brown fox jumps over the lazy dog\n" * 30)
    models = {"gru": ["gru_lm_small", "hidden_dim=16", "embed_dim=16", "num_layers=1"],
              "transformer": ["transformer_lm_char", "d_model=16", "num_heads=2", "num_layers=1"]}
    for model, (name, *args) in models.items():
        assert main(["train", "lm", "--text", str(tmp_path / "t.txt"), "--model", name,
                     *[x for a in args for x in ("--model-arg", a)], "--window", "16", "--epochs", "1",
                     "--batch-size", "4", "--steps-per-epoch", "5", "--run-dir", str(tmp_path / model), "--quiet"]) == 0
    out = tmp_path / "g.png"
    assert main(["viz", "gradients", str(tmp_path / "gru"), str(tmp_path / "transformer"), "--length", "24",
                 "--windows", "2", "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["viz", "gradients", "-o", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "RUN_DIR" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
