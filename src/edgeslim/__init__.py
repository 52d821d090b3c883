"""edgeslim: hand it a model and a little data; get back a smaller, faster on-device model.

>>> import edgeslim                                                      # doctest: +SKIP
>>> res = edgeslim.optimize(recipes="fp32,int8", eval_limit=50)          # the bundled default: PP-OCRv4 rec
>>> res.save("edgeslim-out"); edgeslim.load("edgeslim-out").predict(["line.png"])
"""

from .errors import EdgeslimError

from ._version import __version__
__all__ = ["EdgeslimError", "__version__", "optimize", "load"]


def optimize(*args, **kwargs):
    """See `edgeslim.api.optimize`."""
    from .api import optimize as _optimize

    return _optimize(*args, **kwargs)


def load(path):
    """A delivered model (an output folder with deploy.json, or a model file) ready to `.predict(...)`; see
    `edgeslim.deploy.load`."""
    from .deploy import load as _load

    return _load(path)
