"""edgeslim: hand it a model and a little data; get back a smaller, faster on-device model."""

from .errors import EdgeslimError

__version__ = "0.1.0"
__all__ = ["EdgeslimError", "__version__"]
