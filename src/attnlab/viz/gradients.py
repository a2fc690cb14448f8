"""Why recurrent networks forget, made visible.

- :func:`gradient_norms`: for a window of T tokens and the loss at its **last** position, the norm
  of ∂loss/∂(input at position t) for every t, as a function of the distance T-1-t back from the
  loss. "Input" is the token embedding (every model) or, for recurrent models, the hidden state
  h_t (the recurrence is then run one step at a time through the same ``nn.RNN``/``nn.GRU``/
  ``nn.LSTM`` so that each h_t is a node of the graph). In a recurrent network this gradient is a
  product of one Jacobian per step and shrinks (or grows) geometrically with the distance
  (Bengio et al. 1994; Pascanu et al. 2013); in a Transformer every position is one attention
  step away from the loss.
- The **copy task**: read random symbols, output at time t the symbol read at time t - lag.
  :func:`copy_batch` draws its sequences and :func:`plot_copy_accuracy` draws accuracy against
  lag; the models are trained by the ``rnn-forgetting`` experiment, through the engine.

Figures are :class:`matplotlib.figure.Figure` objects (no pyplot); save them with
:func:`attnlab.viz.common.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError, DataError
from attnlab.viz.common import COLORS


def model_kind(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "cell", None) or "transformer"


def gradient_norms(model: nn.Module, windows: Tensor, wrt: str = "embedding") -> Tensor:
    """Mean over windows of ‖∂ loss_last / ∂ input_t‖, indexed by distance d = T-1-t → (T,).

    ``windows`` (N, T+1) token ids: inputs are [:, :T], the loss is the cross-entropy of the last
    input's prediction of token T. ``wrt`` is "embedding" or "hidden" (recurrent models only).
    """
    if windows.dim() != 2 or windows.shape[1] < 3:
        raise DataError(f"need token windows (N, T+1) with T >= 2, got shape {tuple(windows.shape)}")
    if wrt not in ("embedding", "hidden"):
        raise ConfigError(f"wrt must be 'embedding' or 'hidden', got {wrt!r}")
    was = model.training
    model.eval()
    x, target = windows[:, :-1], windows[:, -1]
    with torch.enable_grad():
        if wrt == "hidden" and getattr(model, "is_recurrent", False):
            points = _recurrent_hidden_states(model, x)
            h_last = points[-1]
            logits = model.head(h_last)
        else:
            emb = model.embed_tokens(x).detach().requires_grad_(True)
            out = model.forward_embeddings(emb)
            logits = (out[0] if isinstance(out, tuple) else out)[:, -1]
            points = [emb]
        loss = F.cross_entropy(logits, target, reduction="sum")  # per-window losses, summed
        if len(points) == 1:
            (g,) = torch.autograd.grad(loss, points)
            norms = g.norm(dim=-1)  # (N, T)
        else:
            grads = torch.autograd.grad(loss, points)
            norms = torch.stack([gi.norm(dim=-1) for gi in grads], dim=1)  # (N, T)
    model.train(was)
    return norms.mean(0).flip(0).detach()  # index = distance back from the loss


def _recurrent_hidden_states(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The top layer's h_t for every t, running the model's own recurrent module one step at a
    time (same weights, same equations) so that each h_t can receive a gradient."""
    emb = model.drop(model.embed_tokens(x))
    state, hs = None, []
    for t in range(x.shape[1]):
        out, state = model.rnn(emb[:, t : t + 1], state)
        h = out[:, 0]
        hs.append(h)
        # feed the exact tensor forward so the gradient w.r.t. h_t includes every later step
        if isinstance(state, tuple):
            state = (torch.cat([state[0][:-1], h[None]], 0), state[1])
        else:
            state = torch.cat([state[:-1], h[None]], 0)
    return hs


def text_windows(ids: Tensor, length: int, count: int, seed: int = 0) -> Tensor:
    """``count`` windows of ``length`` + 1 tokens at random offsets of a token stream."""
    if ids.numel() < length + 1:
        raise DataError(f"the text has {ids.numel()} tokens; windows of {length} need at least {length + 1}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length, (count,), generator=g)
    return ids[starts[:, None] + torch.arange(length + 1)[None]]


def plot_gradient_norms(curves: dict[str, Tensor], title: str | None = None, subtitle: str | None = None):
    """Gradient norm against distance from the loss, one line per model, log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.8))
    ax = fig.subplots()
    for label, y in curves.items():
        y = np.asarray(y, dtype=float)
        kind = label.split()[0]
        ax.plot(np.arange(len(y)), np.maximum(y, 1e-30), lw=2, label=label, color=COLORS.get(kind))
    ax.set_yscale("log")
    ax.set_xlabel("time steps back from the loss (distance t_loss − t)")
    ax.set_ylabel("‖∂ loss / ∂ input at t‖  (mean over windows)")
    ax.set_title(title or "How far back does the gradient reach?", fontsize=12)
    if subtitle:
        ax.text(0.0, 1.01, subtitle, transform=ax.transAxes, fontsize=8.5, color="#555555", va="bottom")
        ax.set_title(title or "How far back does the gradient reach?", fontsize=12, pad=18)
    ax.grid(alpha=0.3, which="both")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return fig


# --- the copy task ---------------------------------------------------------------------------------

def copy_batch(batch: int, lag: int, outputs: int, symbols: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """x (B, lag + outputs) random symbols; y[:, t] = x[:, t - lag] for t ≥ lag (scored), -100 before."""
    x = torch.randint(0, symbols, (batch, lag + outputs), generator=generator)
    y = torch.full_like(x, -100)
    y[:, lag:] = x[:, : outputs]
    return x, y


def plot_copy_accuracy(results: dict[str, list[float]], lags: Sequence[int], symbols: int = 8,
                       subtitle: str | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.8))
    ax = fig.subplots()
    for kind, accs in results.items():
        ax.plot(list(lags), [100 * a for a in accs], "o-", lw=2, ms=5, label=kind, color=COLORS.get(kind))
    ax.axhline(100 / symbols, color="#888888", ls="--", lw=1)
    ax.text(lags[-1], 100 / symbols + 1.5, f"chance ({100 / symbols:.1f}%)", ha="right", fontsize=8.5, color="#666666")
    ax.set_xscale("log")
    ax.set_xticks(list(lags), [str(v) for v in lags])
    ax.set_ylim(0, 105)
    ax.set_xlabel("lag: steps between reading a symbol and having to output it")
    ax.set_ylabel("accuracy on the copied symbols (%)")
    ax.set_title("Copy task: output the symbol read `lag` steps ago", fontsize=12, pad=18 if subtitle else 6)
    if subtitle:
        ax.text(0.0, 1.01, subtitle, transform=ax.transAxes, fontsize=8.5, color="#555555", va="bottom")
    ax.grid(alpha=0.3, which="both")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return fig
