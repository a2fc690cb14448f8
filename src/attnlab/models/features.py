"""A model as a backbone that returns feature maps (timm's ``features_only=True``), e.g. for a
detector: ``create_model("vit_small_patch16_224", features_only=True, out_indices=(3, 7, 11))``.

A model family offers it by having ``feature_info`` (one dict per feature level: ``module``,
``num_chs``, ``reduction``), ``forward_intermediates(x, indices, norm=, output_fmt=,
intermediates_only=True)`` and ``prune_intermediate_layers(indices, prune_norm=)``; nothing here
knows any family. Maps are (B, C, H/r, W/r) for ``output_fmt="NCHW"``, (B, H/r * W/r, C) for
``"NLC"``, with ``r`` the level's reduction (the ViT's patch size, the image-to-token stride of a compact
Transformer's tokeniser). :func:`pick_indices`, :func:`take_indices` and :func:`token_maps` are
the helpers a family's ``forward_intermediates`` shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from attnlab.errors import ConfigError, UnsupportedError

OUTPUT_FORMATS = ("NCHW", "NLC")
#: the keyword arguments of create_model that belong to features_only=True
FEATURE_ARGS = ("features_only", "out_indices", "output_fmt", "feature_cls")


class FeatureInfo:
    """What each feature level is (timm's ``FeatureInfo``): ``channels()``, ``reduction()`` and
    ``module_name()`` list the levels in ``out_indices`` (or the levels ``idx`` names);
    ``len()`` and ``[i]`` address every level of the model, taken or not."""

    def __init__(self, levels: Sequence[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.info = [{**level, "index": i} for i, level in enumerate(levels)]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in (self.out_indices if idx is None else idx)]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: Sequence[int] | None = None) -> list[dict[str, Any]]:
        rows = [self.info[i] for i in (self.out_indices if idx is None else idx)]
        return [dict(r) if keys is None else {k: r[k] for k in keys} for r in rows]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, reduction={self.reduction()})"


def pick_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """Absolute level indices in the order given: None takes all ``count`` levels, an int n the
    last n, a sequence those levels (negative ones count from the end)."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 1 <= indices <= count:
            raise ConfigError(f"an int selects the last n of {count} levels, 1 <= n <= {count}; got {indices}")
        return list(range(count - indices, count))
    out = []
    for i in indices:
        if not isinstance(i, int) or not -count <= i < count:
            raise ConfigError(f"level index {i!r} out of range for {count} levels (valid: {-count}..{count - 1})")
        out.append(i % count)
    if not out:
        raise ConfigError("no level selected: pass an int n (the last n) or a non-empty list of indices")
    return out


def take_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """:func:`pick_indices`, ascending and each once (timm's feature levels)."""
    return sorted(set(pick_indices(count, indices)))


def check_output_fmt(output_fmt: str) -> str:
    if output_fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output_fmt={output_fmt!r} is not allowed; choose one of {', '.join(map(repr, OUTPUT_FORMATS))}")
    return output_fmt


def token_maps(outs: Sequence[Tensor], num_prefix: int, grid: tuple[int, int], output_fmt: str,
               return_prefix_tokens: bool = False) -> list:
    """Blocks' tokens (B, num_prefix + Gh*Gw, C) as feature maps, timm's ``forward_intermediates``
    layout: the grid tokens as (B, C, Gh, Gw) for ``output_fmt="NCHW"`` or (B, Gh*Gw, C) for
    ``"NLC"``; with ``return_prefix_tokens`` each a pair (map, prefix tokens (B, num_prefix, C))."""
    gh, gw = grid
    maps = [t[:, num_prefix:] for t in outs]  # (B, Gh*Gw, C)
    if check_output_fmt(output_fmt) == "NCHW":
        maps = [m.transpose(1, 2).reshape(m.shape[0], m.shape[2], gh, gw) for m in maps]  # (B, C, Gh, Gw)
    if return_prefix_tokens:
        return [(m, t[:, :num_prefix]) for m, t in zip(maps, outs)]
    return maps


class FeatureMaps(nn.Module):
    """The model as a backbone: ``forward(x)`` returns the maps of the levels in ``out_indices``,
    a list of tensors. The model is trimmed in place (timm's getter): blocks after the last level
    taken, the classifier and, unless ``norm=True``, the final norm go."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None, output_fmt: str = "NCHW",
                 norm: bool = False) -> None:
        super().__init__()
        self.output_fmt = check_output_fmt(output_fmt)
        self.norm = norm
        levels = list(model.feature_info)
        if out_indices is None:
            out_indices = min(3, len(levels))  # the last three, as timm's ViTs
        self.out_indices = tuple(model.prune_intermediate_layers(take_indices(len(levels), out_indices),
                                                                 prune_norm=not norm))
        self.feature_info = FeatureInfo(levels, self.out_indices)
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:  # (B, C_in, H, W) -> [(B, C, H/r, W/r) or (B, H/r * W/r, C)]
        return self.model.forward_intermediates(x, list(self.out_indices), norm=self.norm, output_fmt=self.output_fmt,
                                                intermediates_only=True)


def as_features(model: nn.Module, features_only: bool = False, out_indices: int | Sequence[int] | None = None,
                output_fmt: str | None = None, feature_cls: str | None = None) -> nn.Module:
    """``model`` itself, or with ``features_only=True`` a :class:`FeatureMaps` of it. The other
    arguments are features_only's options; ``feature_cls`` may only be timm's ``"getter"``
    (maps read through ``forward_intermediates``), the one kind there is here."""
    if not features_only:
        given = [k for k, v in (("out_indices", out_indices), ("output_fmt", output_fmt), ("feature_cls", feature_cls))
                 if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: option{'s' if len(given) > 1 else ''} of features_only=True, "
                              "which was not asked for")
        return model
    if feature_cls not in (None, "getter"):
        raise UnsupportedError(f"feature_cls={feature_cls!r}: attnlab's feature maps are read through "
                               "forward_intermediates (timm's 'getter'); leave feature_cls out")
    missing = [a for a in ("feature_info", "forward_intermediates", "prune_intermediate_layers") if not hasattr(model, a)]
    if missing:
        name = getattr(model, "name", type(model).__name__)
        raise UnsupportedError(f"features_only=True: {name} ({type(model).__name__}) gives no feature maps "
                               f"(it has no {', '.join(missing)}); the Vision and compact Transformers do")
    return FeatureMaps(model, out_indices, output_fmt or "NCHW")
