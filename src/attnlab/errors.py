"""The library's exception types.

Library code raises these with a message that says what is wrong and how to fix it; only
``attnlab.cli`` prints them (one line, no traceback) and chooses the exit code.
``ShapeError`` and ``ConfigError`` subclass ``ValueError`` so plain Python code can catch
them the usual way.
"""


class AttnlabError(Exception):
    """Base class: every error the CLI reports as one clear line."""


class ConfigError(AttnlabError, ValueError):
    """An impossible configuration (e.g. d_model not divisible by the number of heads)."""


class ShapeError(AttnlabError, ValueError):
    """A tensor of the wrong shape (mask, head dimension, image size, ...)."""


class UnsupportedError(AttnlabError, ValueError):
    """Something we deliberately do not handle (e.g. an unknown module in from_torch)."""


class CheckpointError(AttnlabError, ValueError):
    """A checkpoint that cannot be loaded into the given model, or a bad checkpoint file."""


class DataError(AttnlabError, ValueError):
    """Bad input data: empty, corrupt, undecodable or mismatched files."""
