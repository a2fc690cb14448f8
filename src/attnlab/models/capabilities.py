"""What a model family can do, declared once on its class (issue 22 item 3): code above
``models/`` asks these, it does not ``isinstance`` a family. A new family declares what applies
to it, in its own file, and every layer above takes it as it takes the families here.

- :class:`ImageClassifier`: the family classifies images, (B, C, H, W) -> logits (B, K), and
  says which images through its ``image_input`` property (an :class:`ImageInput`). The image
  task trains such a model (``TaskSpec.model_kinds``) and export writes it as one graph
  images -> logits.
- :class:`LanguageModel`: tokens (B, T) -> logits (B, T, V), with ``is_recurrent`` (a recurrent
  model also takes and returns its state, and has no attention) and ``stepper(cached)``, its
  decoding stepper (:mod:`attnlab.decode.stepper`). Export writes a window graph, plus a
  one-token ``step`` graph with its key/value cache when it is not recurrent; the explorer
  shows the attention of one that is not recurrent.
- :class:`Translator`: (src (B, Ts), tgt_in (B, Tt)) -> logits (B, Tt, V), with ``decoding``:
  :data:`AUTOREGRESSIVE` (token by token through ``stepper(src, cached)``: greedy and beam
  search, the explorer's translation page) or :data:`MASK_PREDICT` (all tokens at once,
  refined: ``encode``, ``predict_length``, ``decode``, ``mask_id``, :mod:`attnlab.decode.mask_predict`).
- :class:`PatchTransformer`: a Transformer over a grid of image patches that shows its position
  embeddings and its attention (the ViT): ``viz posembed``, ``viz attention`` and the explorer's
  image page.
- :class:`QueryDetector`: a set-prediction detector (DETR): learned object queries attend over
  the image's features and each predicts a class and a box; its decoder cross-attention shows
  where each query looks (``viz attention``: DETR Fig. 6, the explorer's detection page).
- :class:`SelfLossDetector`: a detector that computes its own training loss (a CNN detector,
  :mod:`attnlab.models.cnn_detector`) where the detection task computes DETR's set loss;
  its outputs are DETR's, so decoding and scoring are the same for both.
- ``layout`` (a class attribute, :func:`layout_of`): the module layout the family shares, so
  the adapters written for that layout apply to it: :data:`VIT_LAYOUT` (the
  :class:`~attnlab.models.vit.VisionTransformer`'s weights and ``ViTConfig``: the timm,
  torchvision and Hugging Face checkpoint layouts) or :data:`TRANSFORMER_LAYOUT` (the
  :class:`~attnlab.nn.Transformer`'s encoder and decoder stacks: the exported encoder and
  decoder-step graphs, CTranslate2) or :data:`DETR_LAYOUT` (DETR's modules: the Hugging Face
  and original DETR checkpoint layouts).
- :func:`input_stats`: the per-channel mean and std an image model expects of pixels in [0, 1]
  when no run says otherwise (its ``pretrained_cfg`` where it has one, as timm's models do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

AUTOREGRESSIVE = "autoregressive"
MASK_PREDICT = "mask-predict"
VIT_LAYOUT = "vit"
TRANSFORMER_LAYOUT = "transformer"
DETR_LAYOUT = "detr"

#: ImageNet's per-channel mean and std (pixels in [0, 1]): torchvision's, DETR's and timm's default
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: (-1, 1) pixels: the Hugging Face and JAX (big_vision) ViT weights, and timm's ViT weights of the paper's models
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def default_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's (mean, std) for an RGB model, pixels as they are (0, 1) for any other."""
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.0,) * channels, (1.0,) * channels)


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std), for pixels in [0, 1], that ``model`` expects when no run
    says otherwise: its ``pretrained_cfg`` (timm's contract: a timm-named ViT states the values of
    timm's weights for that name), else :func:`default_stats` of its input channels."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return default_stats(int(model.cfg.in_chans))


@dataclass(frozen=True)
class ImageInput:
    """The images a classifier takes: (B, channels, H, W)."""

    channels: int
    size: tuple[int, int]  # (H, W) it was built for
    multiple_of: int | None = None  # H and W may be any multiple of this (a dynamic_img_size ViT); None: exactly size


@runtime_checkable
class ImageClassifier(Protocol):
    """A model that classifies images; ``isinstance(model, ImageClassifier)`` asks it."""

    @property
    def image_input(self) -> ImageInput: ...


@runtime_checkable
class LanguageModel(Protocol):
    """A model of token sequences; ``isinstance(model, LanguageModel)`` asks it."""

    @property
    def is_recurrent(self) -> bool: ...

    def stepper(self, cached: bool = True): ...


@runtime_checkable
class Translator(Protocol):
    """A model that translates token ids; ``isinstance(model, Translator)`` asks it, and its
    ``decoding`` (:data:`AUTOREGRESSIVE` or :data:`MASK_PREDICT`) says how it decodes."""

    decoding: str


@runtime_checkable
class PatchTransformer(Protocol):
    """A Transformer over image patches: its position embeddings (1, N, C) or None, the (Gh, Gw)
    grid of N patch tokens, its attention maps per block (B, H, N, N) and their rollout."""

    def position_table(self) -> Tensor | None: ...

    def token_grid(self, num_tokens: int) -> tuple[int, int]: ...

    def get_attention_maps(self, x: Tensor, blocks=None, *, return_logits: bool = False): ...

    def attention_rollout(self, maps, discard_ratio: float = 0.0, head_fusion: str = "mean") -> Tensor: ...


@runtime_checkable
class QueryDetector(Protocol):
    """A set-prediction detector; ``isinstance(model, QueryDetector)`` asks it. ``object_queries``
    (N, C): the learned queries; ``encode(images, mask)``: the encoder's memory over the feature
    map, whose cells every recorded decoder cross-attention has as its keys."""

    @property
    def object_queries(self) -> Tensor: ...

    def encode(self, images: Tensor, mask: Tensor | None = None): ...


@runtime_checkable
class SelfLossDetector(Protocol):
    """A detector that brings its own loss; ``isinstance(model, SelfLossDetector)`` asks it.

    ``forward(images (B, C, H, W), mask (B, H, W) | None, targets | None) -> dict``, targets as the
    detection task's (per image ``labels`` (M,) in 0..K-1, ``boxes`` (M, 4) cx, cy, w, h in [0, 1] of
    the real image): with targets, ``loss`` and each of ``loss_names`` (scalars, summed into
    ``loss``); unless training with targets, DETR's ``logits`` (B, N, K+1, index K "no object") and
    ``boxes`` (B, N, 4) cx, cy, w, h in [0, 1] of the real image."""

    loss_names: tuple[str, ...]


def layout_of(model: nn.Module) -> str | None:
    """The layout ``model``'s family declares (:data:`VIT_LAYOUT`, :data:`TRANSFORMER_LAYOUT`,
    :data:`DETR_LAYOUT`), or None."""
    return getattr(type(model), "layout", None)


def decodes_by_mask_predict(model: nn.Module) -> bool:
    """Whether ``model`` is a translator that decodes by mask-predict (else token by token)."""
    return isinstance(model, Translator) and model.decoding == MASK_PREDICT
