"""User-facing errors. The CLI prints one line for any `EdgeslimError` and exits with code 2."""

from __future__ import annotations

__all__ = [
    "EdgeslimError",
    "InvalidParameterError",
    "ModelLoadError",
    "DataError",
    "ShapeError",
    "RecipeError",
    "NotFittedError",
    "UnknownNameError",
]


class EdgeslimError(Exception):
    """Root of every error a user can cause; its message says what is wrong and what to do."""


class InvalidParameterError(EdgeslimError, ValueError):
    """An argument has a value we cannot use."""


class ModelLoadError(EdgeslimError, ValueError):
    """A model file is missing, truncated, or not a model we can read."""


class DataError(EdgeslimError, ValueError):
    """A data folder, label file or image is missing or malformed."""


class ShapeError(EdgeslimError, ValueError):
    """An input shape the model rejects."""


class RecipeError(EdgeslimError, RuntimeError):
    """A recipe cannot be applied to this model."""


class NotFittedError(EdgeslimError, RuntimeError):
    """A calibrator or quantizer was used before it saw data."""


class UnknownNameError(EdgeslimError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
