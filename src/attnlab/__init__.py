"""attnlab: the Transformer story from NLP to CV, in PyTorch."""

__version__ = "0.1.0"

from attnlab import nn  # noqa: E402
from attnlab.errors import AttnlabError  # noqa: E402

__all__ = ["__version__", "nn", "AttnlabError"]

from attnlab.models import list_models  # noqa: E402

__all__ += ["create_model", "list_models"]

from attnlab.checkpoints import load_checkpoint, load_model, save_checkpoint  # noqa: E402

__all__ += ["load_checkpoint", "load_model", "save_checkpoint"]


def create_model(name: str, pretrained: bool = False, *, checkpoint_path=None, **kwargs):
    """Build the registered model ``name`` as :func:`attnlab.models.create_model` does (config
    overrides; ``features_only=True`` for a backbone of feature maps), with weights from a local
    file if asked: timm's ``create_model(name, pretrained, checkpoint_path, ...)``.

    ``checkpoint_path``: a file or folder :func:`load_checkpoint` reads (timm, torchvision,
    Hugging Face, JAX ``.npz`` or attnlab layout), loaded strictly into the whole model before
    ``features_only`` trims it. ``pretrained=True`` makes those weights a starting point, as
    timm's pretrained weights: a classifier of another size than the ``num_classes`` asked for
    (or any, with ``features_only``) is left out, and the head starts fresh. attnlab downloads
    nothing: without a ``checkpoint_path``, ``pretrained=True`` loads the weights shipped inside
    the package for ``name`` (:mod:`attnlab.checkpoints.shipped`: sha256-checked, the head kept
    unless ``num_classes`` differs; the model's ``pretrained_cfg`` then states the normalisation
    and class names they were trained with), and is refused for a name that ships none.
    """
    from attnlab.checkpoints import shipped
    from attnlab.errors import CheckpointError
    from attnlab.models.features import FEATURE_ARGS, as_features
    from attnlab.models.registry import create_model as build

    ships = pretrained and checkpoint_path is None
    if ships and shipped.entry(name) is None:
        names = ", ".join(sorted(shipped.table()))
        raise CheckpointError(f"create_model({name!r}, pretrained=True): attnlab "
                              f"{f'ships weights only for {names}' if names else 'ships no weights'} and downloads "
                              "nothing; pass checkpoint_path=FILE, weights you have (a timm, torchvision, Hugging Face, "
                              "JAX .npz or attnlab checkpoint)")
    features = {k: kwargs.pop(k) for k in FEATURE_ARGS if k in kwargs}
    model = build(name, **kwargs)
    if ships:
        shipped.load_shipped(model, name, new_head=True)
    if checkpoint_path is not None:
        try:
            load_checkpoint(model, checkpoint_path)
        except CheckpointError:
            classes = 0 if features.get("features_only") else kwargs.get("num_classes")
            if not (pretrained and classes is not None and _load_without_head(model, checkpoint_path, classes)):
                raise
    return as_features(model, **features)


def _load_without_head(model, checkpoint_path, num_classes: int) -> bool:
    """Load every weight of the checkpoint but its classifier (``head.*``) into ``model``, then
    give it a fresh head of ``num_classes``; False (the model then to be dropped) when more than
    the head does not fit."""
    from attnlab.errors import CheckpointError

    if not hasattr(model, "reset_classifier"):
        return False
    model.reset_classifier(0)
    try:
        report = load_checkpoint(model, checkpoint_path, strict=False)
    except CheckpointError:
        return False
    if report["missing"] or any(not k.startswith("head.") for k in report["unexpected"]):
        return False
    model.reset_classifier(num_classes)
    return True
