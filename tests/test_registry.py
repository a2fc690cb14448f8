"""The model registry beyond the ViTs: the named language-model and translation configurations
build (on the meta device) with the published sizes, take overrides, and refuse the wrong task."""

from __future__ import annotations

import pytest
import torch

from attnlab.cli.main import main
from attnlab.errors import ConfigError
from attnlab.models import create_model, list_models
from attnlab.models.lm import RecurrentLM, TransformerLM
from attnlab.models.registry import probe_model
from attnlab.models.seq2seq import GRUAttentionSeq2Seq, MaskPredictTransformer
from attnlab.nn import Transformer

# The sequence families (ViTs, DETRs and CNNs have their own parametrised tests).
SEQUENCE_MODELS = [n for n in list_models() if type(probe_model(n)) in (RecurrentLM, TransformerLM, Transformer,
                                                                         GRUAttentionSeq2Seq, MaskPredictTransformer)]

# Exact counts of our builds (tied matrices counted once), with the published figure they match:
# Zaremba et al. 2014: medium 20M, large 66M; Vaswani et al. 2017, Table 3: base 65M, big 213M
# (their count is rounded and their vocabulary "about 37000").
PARAMS = {
    "lstm_lm_small": 4_653_200,
    "lstm_lm_medium": 19_780_400,
    "lstm_lm_large": 66_034_000,
    "transformer_base": 63_082_496,
    "transformer_big": 214_245_376,
    "transformer_lm_char": 801_664,
}


def nparams(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_every_family_is_registered():
    kinds = {type(create_model(n, **small(n))) for n in SEQUENCE_MODELS}
    assert {RecurrentLM, TransformerLM, Transformer, GRUAttentionSeq2Seq, MaskPredictTransformer} <= kinds


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_on_meta(name):
    with torch.device("meta"):
        assert nparams(create_model(name)) == PARAMS[name]


def small(name: str) -> dict:
    """Overrides that keep a model tiny, by family (for a real forward pass)."""
    if name.endswith("_lm_char"):
        return dict(d_model=32, num_heads=2, num_layers=1)
    if "_lm_" in name:
        return dict(vocab_size=50, embed_dim=16, hidden_dim=16, dropout=0.0)
    if name.startswith("gru_attention"):
        return dict(src_vocab_size=40, tgt_vocab_size=40, embed_dim=16, hidden_dim=16, attn_dim=16)
    return dict(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
                num_decoder_layers=1)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_each_sequence_model_runs_small(name):
    torch.manual_seed(0)
    m = create_model(name, **small(name)).eval()
    x = torch.randint(4, 40, (2, 7))
    if isinstance(m, (RecurrentLM, TransformerLM)):
        out = m(x)
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape == (2, 7, m.cfg.vocab_size)
    elif isinstance(m, MaskPredictTransformer):
        loss, _ = m.loss(x, torch.randint(4, 40, (2, 5)))
        assert torch.isfinite(loss)
    else:
        assert m(x, x[:, :5]).shape == (2, 5, 40)


def test_overrides_are_checked():
    assert create_model("lstm_lm_small", vocab_size=123, tie_weights=True).cfg.vocab_size == 123
    with pytest.raises(ConfigError, match="no option"):
        create_model("lstm_lm_small", hiden_dim=3)
    with pytest.raises(ConfigError, match="did you mean d_model"):
        create_model("transformer_base", d_modle=3)


def test_train_image_refuses_a_language_model(capsys):
    assert main(["train", "image", "--model", "lstm_lm_small", "--epochs", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trains ImageClassifier models" in err[0]
