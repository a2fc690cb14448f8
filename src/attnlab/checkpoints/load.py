"""Loading a checkpoint of any supported layout into one of our models.

The steps, each in its own function:

1. read the file (:func:`attnlab.checkpoints.io.read_checkpoint`; a run directory is read at
   its best or last checkpoint, :func:`attnlab.checkpoints.rundir.locate`);
2. detect its layout from its key names (:func:`detect_format`);
3. rename and reshape its tensors into our layout (the adapter's ``to_ours``);
4. compare a ViT checkpoint's config with the model's (heads, LayerNorm eps, ...);
5. :func:`load_into`, the one strict loader (every load goes through it: a foreign file, a run
   being resumed, a fine-tuning start): key names, shapes and dtypes checked against the model,
   a learned position embedding of another grid resampled bicubically, a class head of another
   size left fresh when asked (``new_head``). Any problem raises one :class:`CheckpointError`
   naming the offending keys and shapes, before anything is copied; only then are the tensors
   copied in (and the checkpoint's LayerNorm eps adopted).

LayerNorm eps policy: a checkpoint that carries its config (Hugging Face ``config.json``,
ours) states the eps its weights were trained with (1e-12 for Hugging Face, 1e-6 for timm
and JAX). The weights are only right with that eps, so :func:`load_checkpoint` sets every
LayerNorm of the model (and ``model.cfg.norm_eps``) to it and says so in the report under
``"norm_eps"``. Pass ``adopt_eps=False`` to get a CheckpointError instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from attnlab.checkpoints import hf, jax, ours, timm, torchvision
from attnlab.checkpoints.detr import HF_LAYOUT, ORIGINAL_LAYOUT
from attnlab.checkpoints.io import RawCheckpoint, read_checkpoint, unwrap
from attnlab.checkpoints.keys import block_indices
from attnlab.checkpoints.rundir import weights_file
from attnlab.errors import AttnlabError, CheckpointError, ConfigError, UnsupportedError

#: one adapter per layout: NAME, score(keys), to_ours(tensors) (and model_config(raw) for load_model)
ADAPTERS = {a.NAME: a for a in (ours, timm, torchvision, hf, jax, HF_LAYOUT, ORIGINAL_LAYOUT)}
FORMATS = tuple(ADAPTERS)
SHOW = 5  # offending keys named in an error message

# Fields of ViTConfig that decide the computation (the rest only matter for training).
ARCH_FIELDS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads",
               "mlp_ratio", "qkv_bias", "class_token", "global_pool", "pos_embed", "patch_embed", "pre_logits")


# --------------------------------------------------------------------------- detection
_CNN_HINT = ("conv1.weight", "bn1.weight", "layer1.0.", "features.0.", "stem.", "stages.")
_LM_HINT = ("embed_tokens", "wte.", "lm_head", "word_embeddings", "transformer.h.", "decoder.layers.", "tok_embeddings")


def detect_format(keys, config: dict | None = None) -> str:
    """The layout whose characteristic key names the checkpoint uses most; a CheckpointError
    if none of them (a ResNet, a language model, ...). ``config``: a config.json read beside
    the weights, quoted in the error."""
    keys = list(keys)
    scores = {name: a.score(keys) for name, a in ADAPTERS.items()}
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        raise CheckpointError(f"not a Vision Transformer or DETR checkpoint in a known layout ({', '.join(FORMATS)}): "
                              f"{_what_is_it(keys, config)}first keys: {', '.join(keys[:SHOW])}")
    return best


def _format_of(raw: RawCheckpoint) -> str:
    """Our own files say so in their metadata; any other file is known by its key names."""
    if ours.CONFIG_KEY in raw.metadata:
        return ours.NAME
    return detect_format(raw.tensors, raw.config)


def _what_is_it(keys, config: dict | None = None) -> str:
    said = ""
    if isinstance(config, dict) and config.get("model_type"):
        said = f" (its config.json says model_type={config['model_type']!r})"
    if any(h in k for k in keys for h in _CNN_HINT):
        return f"it looks like a convolutional network (e.g. a ResNet){said}; "
    if any(h in k for k in keys for h in _LM_HINT):
        return f"it looks like a language model{said}; "
    return f"{said.strip()}; " if said else ""


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _some(items: list[str]) -> str:
    more = f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def _named(key: str, origin: dict[str, str]) -> str:
    src = origin.get(key, key)
    return key if src == key else f"{key} (from {src})"


def _arch_hints(ck: dict[str, Tensor], sd: dict[str, Tensor]) -> list[str]:
    """Plain-words differences: depth, width, classes, patch size, class token, pooling."""
    hints = []
    dc, dm = block_indices(ck), block_indices(sd)
    if dc and dm and len(dc) != len(dm):
        hints.append(f"the checkpoint has {len(dc)} blocks, the model {len(dm)} (depth)")

    def dim(d, key, axis):
        return d[key].shape[axis] if key in d and d[key].dim() > axis else None

    for key, axis, what in (("patch_embed.proj.weight", 0, "width (embed_dim)"), ("head.weight", 0, "classes (num_classes)"),
                            ("patch_embed.proj.weight", -1, "patch size")):
        a, b = dim(ck, key, axis), dim(sd, key, axis)
        if a is not None and b is not None and a != b:
            hints.append(f"{what}: checkpoint {a}, model {b}")
    if ("cls_token" in ck) != ("cls_token" in sd):
        hints.append("the checkpoint " + ("has" if "cls_token" in ck else "has no") + " class token, the model "
                     + ("has" if "cls_token" in sd else "has none"))
    ck_pool = "token" if "norm.weight" in ck else "avg" if "fc_norm.weight" in ck else None
    sd_pool = "token" if "norm.weight" in sd else "avg" if "fc_norm.weight" in sd else None
    if ck_pool and sd_pool and ck_pool != sd_pool:
        hints.append(f"pooling: checkpoint global_pool={ck_pool!r} ({'norm' if ck_pool == 'token' else 'fc_norm'}), "
                     f"model {sd_pool!r}")
    return hints


def check_config(model: nn.Module, fmt: str, raw: RawCheckpoint,
                 ignore: tuple[str, ...] = ()) -> tuple[list[str], float | None, dict | None]:
    """Compare the config a checkpoint carries with the model's, but for the fields ``ignore``:
    (mismatches, the checkpoint's LayerNorm eps or None, the checkpoint's config in our field
    names or None)."""
    cfg = getattr(model, "cfg", None)
    theirs = None
    if fmt == "attnlab":
        theirs, _ = ours.config_of(raw.metadata, raw.config, raw.source)
    elif fmt == "hf" and raw.config is not None:
        try:
            theirs = hf.model_overrides(raw.config)
        except UnsupportedError as e:
            return [str(e)], None, None
    if theirs is None or cfg is None:
        return [], None, theirs
    bad = []
    for f in ARCH_FIELDS:
        if f not in theirs or not hasattr(cfg, f) or f in ignore:
            continue
        a, b = theirs[f], getattr(cfg, f)
        if f == "img_size":
            continue  # a different grid is resampled, see _plan
        if f == "num_classes" and fmt == "hf":
            continue  # HF's num_labels default is arbitrary; the head's shape decides
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b):
            continue
        if a != b:
            bad.append(f"{f}: checkpoint {a!r}, model {b!r}")
    eps = theirs.get("norm_eps")
    return bad, (None if eps is None else float(eps)), theirs


def _plan(model: nn.Module, tensors: dict[str, Tensor], origin: dict[str, str], strict: bool,
          old_grid: tuple[int, int] | None, new_head: str | None) -> tuple[dict[str, Tensor], dict, list[str]]:
    """Match tensors in our names against the model's state dict: (tensors to copy, report
    entries, problems). Missing and unexpected keys are problems under ``strict``; wrong shapes
    always are, except a learned position embedding of another patch grid (resampled to the
    model's) and a tensor under ``new_head`` (left out: the model keeps its own)."""
    sd = model.state_dict()
    report: dict = {"new_head": []}
    kept = [k for k, t in tensors.items() if new_head and k.startswith(new_head) and k in sd and _shape(t) != _shape(sd[k])]
    missing = [k for k in sd if k not in tensors]
    unexpected = [k for k in tensors if k not in sd]
    wrong, out = [], {}
    for k, t in tensors.items():
        if k not in sd:
            continue
        want = sd[k]
        if k in kept:
            report["new_head"].append(k)
        elif _shape(t) == _shape(want):
            out[k] = t
        elif k == "pos_embed.weight" and t.dim() == 3 and want.dim() == 3 and t.shape[-1] == want.shape[-1]:
            try:
                out[k], report["resampled_pos_embed"] = _resample(model, t, want, old_grid)
            except AttnlabError as e:
                wrong.append(f"{_named(k, origin)}: checkpoint {_shape(t)}, model {_shape(want)} ({e})")
        else:
            wrong.append(f"{_named(k, origin)}: checkpoint {_shape(t)}, model {_shape(want)}")
    for k, t in out.items():
        if not (t.is_floating_point() or t.dtype == sd[k].dtype):
            wrong.append(f"{_named(k, origin)}: dtype {t.dtype} cannot be copied into {sd[k].dtype}")
    problems = []
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {_some(wrong)}")
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_some(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_some([_named(k, origin) for k in unexpected])}")
    if problems:
        hints = _arch_hints(tensors, sd)
        if strict and len(unexpected) > len(tensors) // 2:
            hints.insert(0, f"most of its keys mean nothing to this model; is it a {type(model).__name__} at all?")
        problems = hints + problems
    report["missing"], report["unexpected"] = missing, [_named(k, origin) for k in unexpected]
    return out, report, problems


def _grid_of_model(model: nn.Module) -> tuple[int, int]:
    g = getattr(model, "grid_size", None)
    if g is None:
        raise ConfigError("the model does not say its patch grid (no grid_size attribute)")
    return tuple(g)


def _resample(model: nn.Module, t: Tensor, want: Tensor, old_grid) -> tuple[Tensor, dict]:
    from attnlab.nn.position import grid_of, resample_grid

    prefix = int(getattr(model, "num_prefix_tokens", 1))
    new_grid = _grid_of_model(model)
    n = t.shape[1] - prefix
    if old_grid is None or old_grid[0] * old_grid[1] != n:
        old_grid = grid_of(n)
    out = resample_grid(t.float(), tuple(old_grid), tuple(new_grid), prefix).to(t.dtype)
    if _shape(out) != _shape(want):
        raise CheckpointError(f"resampled to {_shape(out)}")
    return out, {"from": list(old_grid), "to": list(new_grid), "method": "bicubic", "prefix_tokens_kept": prefix}


# --------------------------------------------------------------------------- loading
def as_raw(source) -> RawCheckpoint:
    """A path (file, directory, a run directory or ``RUN_DIR:best|last``), a state dict, or an
    already read RawCheckpoint."""
    if isinstance(source, RawCheckpoint):
        return source
    if isinstance(source, Mapping):
        tensors, notes = unwrap(source, "<state dict>")
        return RawCheckpoint(tensors=tensors, source="<state dict>", file_format="state dict", notes=notes)
    if isinstance(source, (str, os.PathLike)):
        return read_checkpoint(weights_file(source) or source)
    raise CheckpointError(f"cannot load a checkpoint from a {type(source).__name__}; pass a path or a state dict")


def _set_eps(model: nn.Module, eps: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    cfg = getattr(model, "cfg", None)
    if cfg is not None and dataclasses.is_dataclass(cfg) and hasattr(cfg, "norm_eps"):
        model.cfg = dataclasses.replace(cfg, norm_eps=eps)


def _model_eps(model: nn.Module) -> float | None:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "norm_eps"):
        return float(cfg.norm_eps)
    return next((float(m.eps) for m in model.modules() if isinstance(m, nn.LayerNorm)), None)


def load_into(model: nn.Module, tensors: dict[str, Tensor], source: str, *, origin: dict[str, str] | None = None,
              strict: bool = True, old_grid: tuple[int, int] | None = None, new_head: str | None = None,
              problems: list[str] | None = None) -> dict:
    """The one strict loader: copy ``tensors`` (in our names) into ``model`` once every key,
    shape and dtype is checked (see :func:`_plan`); ``problems`` found before (a config that
    differs) are refused with those found here. ``new_head``: a key prefix (``"head."``,
    ``"class_embed."``) whose tensors of another shape are left out, so the model keeps its own
    fresh head (fine-tuning on other classes). Raises one CheckpointError naming ``source`` and
    the offending keys; the model is then unchanged. Returns the report entries (``loaded``,
    ``resampled_pos_embed``, ``missing``, ``unexpected``, ``new_head``, ``dtypes``)."""
    out, report, found = _plan(model, tensors, origin or {}, strict, old_grid, new_head)
    found = list(problems or []) + found
    if found:
        raise CheckpointError(f"{source} does not fit {_model_name(model)} (it is from a different architecture): "
                              + "; ".join(found) + ". Nothing was loaded.")
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))  # tied weights under each of their names
        params.update(dict(model.named_buffers(remove_duplicate=False)))
        for k, t in out.items():
            params[k].copy_(t)
    return {"loaded": len(out), "resampled_pos_embed": report.get("resampled_pos_embed"), "missing": report["missing"],
            "unexpected": report["unexpected"], "new_head": report["new_head"],
            "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in out.values()})}


def load_checkpoint(model: nn.Module, source, *, strict: bool = True, format: str | None = None,
                    adopt_eps: bool = True, new_head: str | None = None) -> dict:
    """Load a checkpoint into ``model`` (in place) and return a report.

    ``source``: a file (``.safetensors``; ``.bin``/``.pth``/``.pt`` read with
    ``torch.load(weights_only=True)``; a JAX ``.npz``), a directory holding
    ``model.safetensors`` or ``pytorch_model.bin`` (+ ``config.json``), a run directory
    (``RUN_DIR``, ``RUN_DIR:last``), or a state dict. ``format``: one of :data:`FORMATS` to skip
    detection. ``strict=False`` tolerates missing and unexpected keys (listed in the report)
    but never wrong shapes. ``new_head``: see :func:`load_into`.

    The report: ``format``, ``source``, ``file_format``, ``loaded`` (tensor count),
    ``resampled_pos_embed`` (``{"from": grid, "to": grid, ...}`` or None), ``norm_eps``
    (``{"from", "to"}`` if the model's LayerNorm eps was changed, else None), ``missing``,
    ``unexpected``, ``new_head`` (the keys left fresh), ``dtypes``, ``normalize`` (the input the
    layout's weights expect: ``{"mean", "std"}`` per channel for pixels in [0, 1], e.g. ImageNet's
    for torchvision, 0.5 for Hugging Face and JAX; None when the layout does not fix it: a timm
    model's ``pretrained_cfg`` says it, a run records its own), ``notes``.

    Raises :class:`CheckpointError` naming the offending keys and shapes; the model is then
    unchanged.
    """
    raw = as_raw(source)
    fmt = format or _format_of(raw)
    if fmt not in ADAPTERS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    tensors, origin = ADAPTERS[fmt].to_ours(raw.tensors)

    bad, eps, theirs = check_config(model, fmt, raw, ignore=("num_classes",) if new_head else ())
    old_grid = None
    if theirs is not None and "img_size" in theirs and "patch_size" in theirs:
        h, w = hf._pair(theirs["img_size"])
        p = int(theirs["patch_size"] if isinstance(theirs["patch_size"], int) else theirs["patch_size"][0])
        old_grid = (h // p, w // p)
    mine = _model_eps(model)
    eps_change = None
    if eps is not None and mine is not None and eps != mine:
        if adopt_eps:
            eps_change = {"from": mine, "to": eps}
        else:
            bad.append(f"norm_eps: checkpoint {eps!r}, model {mine!r} (pass adopt_eps=True to use the checkpoint's)")
    if fmt == "jax" and "norm.weight" in tensors and hasattr(model, "fc_norm") and isinstance(model.fc_norm, nn.LayerNorm):
        bad.append("the JAX checkpoint normalises all tokens before pooling (encoder_norm); this model pools first "
                   "and normalises the average (fc_norm, global_pool='avg'), which is not the same function")
    problems = [f"config mismatch ({len(bad)}): {'; '.join(bad)}"] if bad else []
    report = load_into(model, tensors, f"checkpoint {raw.source!r} ({fmt} layout)", origin=origin, strict=strict,
                       old_grid=old_grid, new_head=new_head, problems=problems)
    if eps_change is not None:
        _set_eps(model, eps)

    notes = list(raw.notes)
    if fmt == "hf" and raw.config is None:
        notes.append("no config.json beside the weights: LayerNorm eps, heads and image size were not checked "
                     "(Hugging Face ViTs use layer_norm_eps=1e-12)")
    stats = _input_for(ADAPTERS[fmt].INPUT, getattr(getattr(model, "cfg", None), "in_chans", None))
    return {"format": fmt, "source": raw.source, "file_format": raw.file_format, **report, "norm_eps": eps_change,
            "normalize": stats, "notes": notes}


def _input_for(stats, channels: int | None) -> dict | None:
    """A layout's input statistics for a model of ``channels`` input channels: as they are when
    the counts match, one shared value repeated (0.5 fits any count), else None (ImageNet's three
    values say nothing about a grey model)."""
    if stats is None or channels is None:
        return None
    mean, std = stats
    if len(mean) != channels:
        if len(set(mean)) > 1 or len(set(std)) > 1:
            return None
        mean, std = mean[:1] * channels, std[:1] * channels
    return {"mean": list(mean), "std": list(std)}


def _model_name(model: nn.Module) -> str:
    name = getattr(model, "name", None)
    return f"{type(model).__name__} {name!r}" if name else type(model).__name__


def load_model(source, *, strict: bool = True, return_report: bool = False, **overrides):
    """Build the model a checkpoint describes and load it.

    Works for checkpoints that carry their config: ours (safetensors metadata or a JSON of the
    same stem; a run directory of ``attnlab train`` is one, for every model family), Hugging
    Face ViT directories (``config.json``, whose ``layer_norm_eps`` becomes our ``norm_eps``)
    and DETR checkpoints of either layout (``detr_resnet50`` with the checkpoint's shapes).
    ``overrides`` change config fields, e.g. ``img_size=384`` to resample the position embedding
    to a larger grid. A model name saved in our metadata that is
    registered (:func:`attnlab.models.create_model`) is built through the registry, so other
    model families saved with :func:`save_checkpoint` come back too. Returns the model in
    eval mode (and the report when ``return_report``).
    """
    raw = as_raw(source)
    fmt = _format_of(raw)
    cfg, name = ours.config_of(raw.metadata, raw.config, raw.source)
    if cfg is None and raw.config is not None and fmt == "hf":
        cfg = _hf_config(raw)
        name = "hf_vit"
    if cfg is None and hasattr(ADAPTERS[fmt], "model_config"):
        name, cfg = ADAPTERS[fmt].model_config(raw)
    if cfg is None:
        raise CheckpointError(
            f"checkpoint {raw.source!r} ({fmt} layout) does not carry its model config; build the model with "
            "attnlab.models.create_model(name, ...) and call load_checkpoint(model, path)")
    model = _build(raw.source, cfg, name, overrides)
    report = load_checkpoint(model, raw, strict=strict, format=fmt)
    model.eval()
    return (model, report) if return_report else model


def _build(source: str, cfg: dict, name: str | None, overrides: dict) -> nn.Module:
    """The registered model ``name`` with the checkpoint's config (any model family whose
    builder takes its config fields as overrides), else a VisionTransformer of that config."""
    from attnlab.models.registry import config_from, create_model, is_model
    from attnlab.models.vit import VisionTransformer, ViTConfig

    try:
        if name and is_model(name):
            return create_model(name, **{**cfg, **overrides})
        fields = {f.name for f in dataclasses.fields(ViTConfig)}
        unknown = [k for k in cfg if k not in fields]
        if unknown:
            raise ConfigError(f"fields ViTConfig does not know: {', '.join(unknown)}")
        return VisionTransformer(config_from(ViTConfig, cfg, overrides), name=name or "vit")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {source!r}: its config does not build a model: {e}") from None


def _hf_config(raw: RawCheckpoint) -> dict:
    """Our config for a Hugging Face checkpoint: its config.json, plus what the weights say
    about the parts config.json leaves to the class (classifier or not, pooler or not)."""
    try:
        cfg = hf.model_overrides(raw.config)
    except UnsupportedError as e:
        raise CheckpointError(f"checkpoint {raw.config_path!r}: {e}") from None
    keys = list(raw.tensors)
    head = next((raw.tensors[k] for k in keys if k == "classifier.weight"), None)
    cfg["num_classes"] = 0 if head is None else int(head.shape[0])
    cfg["pre_logits"] = any(k.startswith(("pooler.", "vit.pooler.")) for k in keys)
    return cfg
