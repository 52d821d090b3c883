"""Low-bit training in PyTorch: mixed precision (:mod:`.amp`), quantization-aware training
(:mod:`.qat`), binary networks and their packed export (:mod:`.bnn`), a small training loop
(:mod:`.loop`), dataset readers (:mod:`.data`) and Reformer's LSH attention (:mod:`.reformer`). Submodules load lazily, so importing
``edgeslim.research.train`` does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["amp", "bnn", "data", "loop", "qat", "reformer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
