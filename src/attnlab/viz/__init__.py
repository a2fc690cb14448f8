"""Pictures: position-embedding similarity, attention maps and rollout of Vision
Transformers (:mod:`attnlab.viz.vit`). Figures are built without pyplot (Agg, no display)."""

from attnlab.viz.vit import (
    figure_to_png,
    load_image,
    plot_attention,
    plot_posembed_similarity,
    posembed_similarity,
    save_figure,
)

__all__ = ["figure_to_png", "load_image", "plot_attention", "plot_posembed_similarity", "posembed_similarity",
           "save_figure"]
