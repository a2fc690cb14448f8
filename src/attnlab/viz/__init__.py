"""All pictures: :mod:`~attnlab.viz.common` (one palette, one checked, atomic
:func:`save_figure`), :mod:`~attnlab.viz.curves` (learning curves, confusion matrix),
:mod:`~attnlab.viz.vit` (position-embedding similarity, attention maps and rollout),
:mod:`~attnlab.viz.text` (attention of text models), :mod:`~attnlab.viz.gradients` (gradient
norms against distance, the copy task). Figures are built without pyplot (Agg, no display)."""

from attnlab.viz.common import figure_to_png, save_figure
from attnlab.viz.vit import plot_attention, plot_posembed_similarity, posembed_similarity

__all__ = ["figure_to_png", "plot_attention", "plot_posembed_similarity", "posembed_similarity", "save_figure"]
