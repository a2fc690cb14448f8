"""Illustrated reports of image-classification runs (the demo's report): figures of test
images with the model's predictions and attention, and a document written as both Markdown
(``report.md``) and self-contained-looking HTML (``report.html``, images beside it).

A report is a list of blocks — ``("h1", text)``, ``("h2", text)``, ``("p", text)``,
``("img", file, caption)``, ``("table", rows)``, ``("code", text)`` — rendered by
:func:`write_report` in both formats. Text may use ``**bold**`` and ``code`` markup.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from attnlab.io import atomic_write
from attnlab.viz.common import HEATMAP

# --- figures ------------------------------------------------------------------------------------


def _img(ax, x: np.ndarray) -> None:
    """Show a (C, H, W) uint8 image."""
    if x.shape[0] == 1:
        ax.imshow(x[0], cmap="gray_r" if x.mean() < 100 else "gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(x.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def plot_predictions(images: Tensor, labels: Tensor, probs: Tensor, classes: list[str], title: str, cols: int = 10):
    """A grid of images with ``predicted (p)`` underneath, green when right, red when wrong."""
    from matplotlib.figure import Figure

    n = len(images)
    cols = min(cols, max(n, 1))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(1.25 * cols, 1.45 * rows + 0.5))
    axs = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axs):
        if i >= n:
            ax.set_visible(False)
            continue
        _img(ax, images[i].numpy())
        p, c = probs[i].max(0)
        ok = int(c) == int(labels[i])
        ax.set_title(f"{classes[int(c)]} ({float(p):.2f})", fontsize=9, color="#1a7f37" if ok else "#c62828",
                     fontweight="normal" if ok else "bold")
        if not ok:
            ax.set_xlabel(f"true: {classes[int(labels[i])]}", fontsize=8, color="#555555")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_attention_grid(model: nn.Module, images: Tensor, labels: Tensor, classes: list[str], normalize,
                        title: str = "Where the model looks"):
    """For a few test images: the image (top row) and its attention rollout (Abnar & Zuidema
    2020: attention multiplied through the blocks, with the residual paths) laid over it
    (bottom row), with the prediction."""
    from matplotlib.figure import Figure

    was = model.training
    model.eval()
    x = normalize(images)
    logits, maps = model.get_attention_maps(x, return_logits=True)
    roll = model.attention_rollout(maps).float()  # (B, Gh, Gw)
    model.train(was)
    probs = logits.float().softmax(-1)
    n = len(images)
    fig = Figure(figsize=(1.45 * n, 3.35))
    axs = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        im = images[i].float().numpy() / 255.0  # (C, H, W)
        grey = im.mean(0)
        r = roll[i].numpy()
        h, w = grey.shape
        _img(axs[0, i], images[i].numpy())
        ax = axs[1, i]
        ax.imshow(r, cmap=HEATMAP, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        if grey.max() > grey.min():  # the strokes' outline on top of the map
            ax.contour(np.arange(w), np.arange(h), grey, levels=[0.5 * (grey.max() + grey.min())],
                       colors="#7fdbff", linewidths=1.1)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        p, c = probs[i].max(0)
        ok = int(c) == int(labels[i])
        axs[0, i].set_title(f"{classes[int(c)]} ({float(p):.2f})", fontsize=9, color="#1a7f37" if ok else "#c62828")
    axs[0, 0].set_ylabel("test image", fontsize=9)
    axs[1, 0].set_ylabel("rollout + outline", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# --- documents ----------------------------------------------------------------------------------

def _html_inline(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    s = re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', s)
    return s


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1.2em; color: #1f2328; line-height: 1.55; }
h1 { font-size: 1.9em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.35em; margin-top: 1.8em; border-bottom: 1px solid #eaeef2; padding-bottom: .2em; }
figure { margin: 1em 0 1.6em; text-align: center; }
figure img { max-width: 100%; border: 1px solid #eaeef2; border-radius: 6px; }
figcaption { font-size: .92em; color: #57606a; margin-top: .4em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #d0d7de; padding: .35em .8em; text-align: left; }
th { background: #f6f8fa; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f6f8fa; border-radius: 4px; }
code { padding: .1em .3em; font-size: .92em; }
pre { padding: .8em 1em; overflow-x: auto; }
.big { font-size: 1.25em; }
"""


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        elif kind == "table":
            rows = b[1]
            out.append("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
                       + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows[1:]))
        elif kind == "code":
            out.append("```\n" + b[1].rstrip() + "\n```")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple], title: str) -> str:
    out = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_html_inline(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_html_inline(b[1])}</p>")
        elif kind == "img":
            out.append(f'<figure><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}">'
                       f"<figcaption>{_html_inline(b[2])}</figcaption></figure>")
        elif kind == "table":
            rows = b[1]
            head = "".join(f"<th>{_html_inline(str(c))}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_html_inline(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(b[1].rstrip())}</code></pre>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(directory: str | Path, blocks: list[tuple], title: str) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``directory``; returns their paths."""
    d = Path(directory)
    md, ht = d / "report.md", d / "report.html"
    with atomic_write(md, "w") as f:
        f.write(render_markdown(blocks))
    with atomic_write(ht, "w") as f:
        f.write(render_html(blocks, title))
    return md, ht
