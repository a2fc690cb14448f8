"""Pictures of a Vision Transformer: the similarity of its position embeddings (ViT paper,
Fig. 7) and its attention on an image (per-head maps of one block and the attention rollout of
Abnar & Zuidema 2020).

Every plot function returns a :class:`matplotlib.figure.Figure` built without pyplot (no
global state, no display needed); :func:`save_figure` writes it as a PNG atomically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from attnlab.data.transforms import Normalize, default_normalization
from attnlab.errors import ConfigError, ShapeError
from attnlab.models.features import pick_indices
from attnlab.models.vit import VisionTransformer
from attnlab.viz.common import HEATMAP


# ---------------------------------------------------------------------- position embeddings
def patch_position_embeddings(model: VisionTransformer) -> Tensor:
    """The absolute position embedding of each patch, (Gh*Gw, C), without the class token's."""
    table = model.position_table()
    if table is None:
        raise ConfigError(f"{model.name} has no absolute position embedding to plot (pos_embed={model.cfg.pos_embed!r}); "
                          "only 'learn', 'learn2d' and 'sincos2d' add one to the patches")
    return table.detach()[0, model.num_prefix_tokens:].float()


def posembed_similarity(model: VisionTransformer) -> Tensor:
    """Cosine similarity between the position embeddings of every pair of patches,
    (Gh, Gw, Gh, Gw): entry [r, c] is the Gh x Gw map for the patch at row r, column c."""
    pe = patch_position_embeddings(model)  # (N, C)
    pe = pe / pe.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gh, gw = model.grid_size
    return (pe @ pe.T).reshape(gh, gw, gh, gw)


def _mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """(R, C, h, w) tiles -> one (R*(h+gap)-gap, C*(w+gap)-gap) image with NaN gaps."""
    r, c, h, w = tiles.shape
    out = np.full((r * (h + gap) - gap, c * (w + gap) - gap), np.nan)
    for i in range(r):
        for j in range(c):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = tiles[i, j]
    return out


def _tile_ticks(ax, n_rows: int, n_cols: int, h: int, w: int, gap: int = 1) -> None:
    def ticks(n, size):
        step = 1 if n <= 16 else (2 if n <= 32 else 4)
        idx = list(range(0, n, step))
        return [i * (size + gap) + (size - 1) / 2 for i in idx], [str(i + 1) for i in idx]

    ax.set_xticks(*ticks(n_cols, w))
    ax.set_yticks(*ticks(n_rows, h))
    ax.tick_params(length=0, labelsize=8)
    for s in ax.spines.values():
        s.set_visible(False)


def plot_posembed_similarity(model: VisionTransformer, title: str | None = None) -> Figure:
    """The ViT paper's Fig. 7: for each patch (tile at row r, column c of a Gh x Gw grid of
    tiles), the cosine similarity of its position embedding with those of all patches."""
    sim = posembed_similarity(model).cpu().numpy()
    gh, gw = model.grid_size
    img = _mosaic(sim)
    fig = Figure(figsize=(7.4, 6.6), layout="constrained")
    ax = fig.add_subplot()
    cmap = _cmap("viridis")
    im = ax.imshow(img, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    _tile_ticks(ax, gh, gw, gh, gw)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("cosine similarity")
    kind = {"learn": "learned 1-D", "learn2d": "learned 2-D (row + column)"}.get(model.cfg.pos_embed, "2-D sin-cos")
    ax.set_title(title or f"Position embedding similarity: {model.name}", fontsize=12)
    fig.text(0.5, 0.005, f"{kind} embeddings, {gh}x{gw} patch grid; each tile: that patch vs every patch",
             ha="center", va="bottom", fontsize=8, color="0.3")
    return fig


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="white")


# ---------------------------------------------------------------------- attention
def model_input(model: VisionTransformer, image: Tensor, normalize: Normalize | None) -> Tensor:
    """One uint8 image (C, H, W) at the model's size -> the model's input (1, C, H, W), normalised
    by ``normalize`` (default: :func:`~attnlab.data.transforms.default_normalization`)."""
    if image.dim() != 3 or image.dtype != torch.uint8:
        raise ShapeError(f"give one uint8 image (C, H, W) (attnlab.data.images.read_model_images reads one), "
                         f"got {image.dtype} of shape {tuple(image.shape)}")
    normalize = normalize if normalize is not None else default_normalization(model)
    return normalize(image[None].to(next(model.parameters()).device))


@torch.no_grad()
def attention_summary(model: VisionTransformer, image: Tensor, normalize: Normalize | None = None, *, block: int = -1,
                      discard_ratio: float = 0.0, head_fusion: str = "mean") -> dict:
    """Everything :func:`plot_attention` draws, as tensors, for one uint8 image (C, H, W)
    (:func:`model_input`): ``heads`` (H, Gh, Gw) the chosen block's per-head attention over the
    patches (the class token's row, or without a class token the mean over the patch rows),
    ``rollout`` (Gh, Gw), ``probs`` (num_classes,) or None, ``block`` (the block index, non-negative)."""
    x = model_input(model, image, normalize)
    was_training = model.training
    model.eval()
    try:
        logits, maps = model.get_attention_maps(x, return_logits=True)
    finally:
        model.train(was_training)
    block = pick_indices(len(model.blocks), [block])[0]
    k = model.num_prefix_tokens
    grid = model.token_grid(maps[0].shape[-1])
    a = maps[block][0].float()  # (H, N, N)
    heads = a[:, 0, k:] if model.cls_token is not None else a[:, k:, k:].mean(dim=1)  # (H, Gh*Gw)
    rollout = model.attention_rollout(maps, discard_ratio=discard_ratio, head_fusion=head_fusion)[0]
    probs = logits[0].softmax(-1).cpu() if model.cfg.num_classes > 0 else None
    return {"heads": heads.reshape(-1, *grid).cpu(), "rollout": rollout.cpu(), "probs": probs, "block": block}


def _show_image(ax, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")


def _stretch(amap: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] from its minimum to its maximum (a flat map becomes 0)."""
    lo, hi = float(amap.min()), float(amap.max())
    return (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)


def _blend(img: np.ndarray, amap: np.ndarray, weight: float = 0.6) -> np.ndarray:
    """The image in grey, mixed with the colour-mapped ``amap`` (Gh, Gw) stretched to its own
    range and enlarged patch by patch to the image's size: (H, W, 3)."""
    h, w = img.shape[:2]
    gh, gw = amap.shape
    rows, cols = np.arange(h) * gh // h, np.arange(w) * gw // w
    heat = _cmap(HEATMAP)(_stretch(amap)[rows][:, cols])[..., :3]  # (H, W, 3)
    grey = np.clip(img, 0, 1).mean(axis=-1, keepdims=True)
    return (1 - weight) * grey + weight * heat


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention(model: VisionTransformer, image: Tensor, normalize: Normalize | None = None, *, block: int = -1,
                   discard_ratio: float = 0.0, head_fusion: str = "mean", class_names: Sequence[str] | None = None,
                   title: str | None = None, max_cols: int = 6) -> Figure:
    """Where the model looks: the image, its attention rollout (Abnar & Zuidema 2020) over the
    patches and that map laid over the image; below, each head of block ``block`` (default
    the last): the class token's attention to every patch (without a class token: the
    attention each patch receives, averaged over the patches).

    ``image`` uint8 (C, H, W) at the model's size, normalised for the model by ``normalize``
    (:func:`model_input`). The rollout is drawn with its values (colour bar); over the image,
    each map is stretched from its minimum to its maximum.
    """
    s = attention_summary(model, image, normalize, block=block, discard_ratio=discard_ratio, head_fusion=head_fusion)
    img = image.detach().float().cpu().permute(1, 2, 0).numpy() / 255.0  # (H, W, C) in [0, 1]
    heads, rollout = s["heads"].numpy(), s["rollout"].numpy()
    nh = heads.shape[0]
    cols = min(max_cols, nh)
    rows = -(-nh // cols)
    panel = 2.1
    width = max(3 * 2.6, cols * panel) + 0.6
    fig = Figure(figsize=(width, 3.3 + rows * (panel + 0.25) + 0.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.3, rows * (panel + 0.25) + 0.5])

    pred = ""
    if s["probs"] is not None:
        p, c = s["probs"].max(0)
        label = class_names[int(c)] if class_names is not None else f"class {int(c)}"
        pred = f" — prediction: {label} (p = {float(p):.2f})"
    fig.suptitle(title or f"Attention of {model.name}{pred}", fontsize=12)

    axs = top.subplots(1, 3)
    _show_image(axs[0], img)
    axs[0].set_title("input", fontsize=10)
    gh, gw = rollout.shape
    im = axs[1].imshow(rollout, cmap=HEATMAP, interpolation="nearest")
    axs[1].set_title(f"attention rollout ({gh}x{gw} patches)", fontsize=10)
    top.colorbar(im, ax=axs[1], shrink=0.8, label="rollout weight")
    axs[2].imshow(_blend(img, rollout), interpolation="nearest")
    axs[2].set_title("rollout over the input", fontsize=10)
    for ax in axs:
        _bare(ax)

    who = "the class token's attention" if model.cls_token is not None else "mean attention received"
    bottom.suptitle(f"block {s['block']} (of 0..{len(model.blocks) - 1}), each head: {who} over the patches "
                    "(dark = its least, bright = its most)", fontsize=10)
    hax = bottom.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(hax):
        _bare(ax)
        if i < nh:
            ax.imshow(_blend(img, heads[i]), interpolation="nearest")
            ax.set_title(f"head {i}", fontsize=9)
        else:
            ax.set_visible(False)
    return fig
