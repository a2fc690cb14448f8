"""attnlab: the Transformer story from NLP to CV, in PyTorch."""

__version__ = "0.1.0"

from attnlab import nn  # noqa: E402
from attnlab.errors import AttnlabError  # noqa: E402

__all__ = ["__version__", "nn", "AttnlabError"]

from attnlab.models import create_model, list_models  # noqa: E402

__all__ += ["create_model", "list_models"]

from attnlab.checkpoints import load_checkpoint, load_model, save_checkpoint  # noqa: E402

__all__ += ["load_checkpoint", "load_model", "save_checkpoint"]
