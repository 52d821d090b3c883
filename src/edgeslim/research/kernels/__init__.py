"""CPU kernels in numba: bit-packed binary GEMM/conv (:mod:`.binary`, NumPy reference in
:mod:`.binary_ref`). Submodules load lazily so ``import edgeslim.research.kernels`` needs no numba."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["binary", "binary_ref"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
