"""Every registered model answers the capability questions of :mod:`attnlab.models.capabilities`
consistently, and the layers above act on the answers: a family that decodes token by token
builds a stepper, one that decodes by mask-predict decodes that way, the export graphs, the
checkpoint layouts and the explorer's page follow what the family declares."""

from __future__ import annotations

import pytest
import torch

from attnlab import create_model, list_models
from attnlab.checkpoints.save import save_formats
from attnlab.cli.viz_explore import family
from attnlab.decode.mask_predict import mask_predict
from attnlab.decode.stepper import make_stepper
from attnlab.errors import ConfigError, UnsupportedError
from attnlab.export.graph import graphs_of
from attnlab.models.capabilities import (
    AUTOREGRESSIVE,
    DETR_LAYOUT,
    MASK_PREDICT,
    TRANSFORMER_LAYOUT,
    VIT_LAYOUT,
    ImageClassifier,
    LanguageModel,
    PatchTransformer,
    QueryDetector,
    SelfLossDetector,
    Translator,
    layout_of,
)
from attnlab.models.registry import probe_model

SMALL = 10_000_000  # parameters: the models built with real weights here


def _small_models() -> list[str]:
    return [n for n in list_models() if sum(p.numel() for p in probe_model(n).parameters()) <= SMALL]


def _kinds(model) -> list[str]:
    kinds = (ImageClassifier, LanguageModel, Translator, QueryDetector, SelfLossDetector)
    return [k.__name__ for k in kinds if isinstance(model, k)]


@pytest.mark.parametrize("name", list_models())
def test_declarations_agree(name):
    """One of image classifier / language model / translator / query detector / self-loss detector;
    each answer has the members that go with it; a layout goes with the kind of model it lays out."""
    model = probe_model(name)
    assert len(_kinds(model)) == 1, _kinds(model)
    if isinstance(model, SelfLossDetector):
        assert isinstance(model.loss_names, tuple) and model.loss_names
    if isinstance(model, LanguageModel):
        assert isinstance(model.is_recurrent, bool)
    if isinstance(model, Translator):
        assert model.decoding in (AUTOREGRESSIVE, MASK_PREDICT)
        needs = ("stepper",) if model.decoding == AUTOREGRESSIVE else ("encode", "predict_length", "decode", "mask_id")
        assert all(hasattr(model, a) for a in needs), needs
    if isinstance(model, PatchTransformer):
        assert isinstance(model, ImageClassifier)
    assert layout_of(model) in (None, VIT_LAYOUT, TRANSFORMER_LAYOUT, DETR_LAYOUT)
    if layout_of(model) == DETR_LAYOUT:
        assert isinstance(model, QueryDetector) and model.object_queries.shape[0] == model.cfg.num_queries
    if layout_of(model) == VIT_LAYOUT:
        assert isinstance(model, PatchTransformer)
    if layout_of(model) == TRANSFORMER_LAYOUT:
        assert isinstance(model, Translator) and model.decoding == AUTOREGRESSIVE


@pytest.mark.parametrize("name", list_models())
def test_explorer_page_follows_the_declarations(name):
    model = probe_model(name)
    page = {isinstance(model, PatchTransformer): "vit", isinstance(model, QueryDetector): "detr",
            isinstance(model, LanguageModel) and not model.is_recurrent: "lm",
            isinstance(model, Translator) and model.decoding == AUTOREGRESSIVE: "translation"}.get(True)
    if page is None:
        with pytest.raises(ConfigError):
            family(model)
    else:
        assert family(model) == page


@pytest.mark.parametrize("name", _small_models())
def test_small_models_do_what_they_declare(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        if isinstance(model, LanguageModel):
            logits = model.stepper(cached=True).step(torch.tensor([[1, 2, 3]]))
            assert logits.shape == (1, model.cfg.vocab_size)
        if isinstance(model, Translator):
            src = torch.tensor([[5, 6, 7, 2]])
            if model.decoding == AUTOREGRESSIVE:
                assert make_stepper(model, src).step(torch.tensor([[1]])).dim() == 2
            else:
                with pytest.raises(ConfigError, match="no stepper"):
                    make_stepper(model, src)
                assert len(mask_predict(model, src, iterations=1, length_beam=1)) == 1
    expected = None
    if isinstance(model, ImageClassifier):
        expected = [""]
    elif isinstance(model, LanguageModel):
        expected = [""] if model.is_recurrent else ["", "step"]
    elif layout_of(model) == TRANSFORMER_LAYOUT:
        expected = ["encoder", "decoder"]
    if expected is None:
        with pytest.raises(UnsupportedError):
            graphs_of(model)
    else:
        assert [g.name for g in graphs_of(model, window=8)] == expected
    vit_formats = {"timm", "torchvision", "hf"} & set(save_formats(model))
    assert bool(vit_formats) <= (layout_of(model) == VIT_LAYOUT)
