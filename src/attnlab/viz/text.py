"""Attention of text models as pictures.

- :func:`lm_attention`: the self-attention of a language model over a prompt, every layer ×
  every head (rows: the token attending, columns: the tokens it attends to; causal, so the
  upper triangle is empty).
- :func:`translation_attention` + :func:`plot_alignment`: the cross-attention of a translation
  model between a source sentence and its translation, target tokens × source tokens, as in
  Bahdanau, Cho & Bengio (2015), Fig. 3 (their additive attention; ours averages the heads of
  one decoder layer, the last by default).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.viz.record import AttentionRecorder

MAX_TOKENS = 64  # more labels than this are unreadable


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """One printable label per token id: a special token by its own name
    (:meth:`~attnlab.data.tokenizers.Tokenizer.special_name`: ``<s>``, ``</s>``...), any other by
    its text with whitespace made visible (its vocabulary entry when that text is empty)."""
    out = []
    for i in ids:
        special = tokenizer.special_name(i)
        if special is not None:
            out.append(special)
            continue
        s = tokenizer.decode([i]).replace("\n", "\\n").replace(" ", "·")
        out.append("".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s) or tokenizer.id_to_token(int(i)))
    return out


@torch.no_grad()
def lm_attention(model: nn.Module, ids: Tensor) -> list[Tensor]:
    """Self-attention weights of every layer for token ids (1, T): a list of (H, T, T)."""
    if getattr(model, "is_recurrent", False):
        raise ConfigError("a recurrent language model has no attention to draw; 'attnlab viz gradients' shows what it "
                          "remembers")
    with AttentionRecorder(model) as rec:
        model(ids)
    return [m[0] for m in rec.stacked("self_attn")]


def plot_lm_attention(maps: list[Tensor], labels: list[str], title: str) -> Figure:
    """A grid of layers (rows) × heads (columns) of (T, T) attention maps."""
    layers, heads = len(maps), maps[0].shape[0]
    t = len(labels)
    cell = 1.6 if t > 16 else 1.3
    fig = Figure(figsize=(0.6 + cell * heads, 0.7 + cell * layers))
    axes = np.atleast_2d(fig.subplots(layers, heads, squeeze=False))
    for li in range(layers):
        for h in range(heads):
            ax = axes[li, h]
            ax.imshow(maps[li][h].float().numpy(), cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if li == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {li}", fontsize=8)
    if t <= 24:  # label the first column's axes with the tokens
        ax = axes[-1, 0]
        ax.set_xticks(range(t), labels, rotation=90, fontsize=6)
        axes[-1, 0].set_yticks(range(t), labels, fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def translation_attention(model: nn.Module, src: Tensor, tgt_in: Tensor, layer: int = -1) -> Tensor:
    """Cross-attention (Tt, Ts) of a translation model, teacher-forced on ``tgt_in`` (1, Tt):
    the chosen decoder layer's heads averaged (additive attention: its single map)."""
    with AttentionRecorder(model) as rec:
        model(src, tgt_in)
    cross = rec.stacked("cross_attn") or rec.stacked("attention")
    if not cross:
        raise ConfigError(f"{type(model).__name__} has no cross-attention to draw")
    try:
        w = cross[layer]
    except IndexError:
        raise ConfigError(f"--layer {layer}: the decoder has {len(cross)} layer(s) with cross-attention") from None
    return w[0].mean(0)  # (Tt, Ts)


def plot_alignment(weights: Tensor, src_labels: list[str], tgt_labels: list[str], title: str) -> Figure:
    """Target tokens (rows) × source tokens (columns), darker = more attention (Bahdanau Fig. 3)."""
    tt, ts = weights.shape
    fig = Figure(figsize=(1.5 + 0.32 * ts, 1.5 + 0.32 * tt))
    ax = fig.subplots()
    ax.imshow(weights.float().numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks(range(ts), src_labels, rotation=90, fontsize=8)
    ax.set_yticks(range(tt), tgt_labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel("source tokens")
    ax.set_ylabel("target tokens (each row: one decoding step)")
    ax.set_title(title, fontsize=10, pad=12)
    fig.tight_layout()
    return fig
