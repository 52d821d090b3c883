"""Hardware-aware architecture search: a weight-sharing supernet evolved with CARS (Yang et al., CVPR 2020),
selected by non-dominated sorting on accuracy, measured latency and size; runs scale out as Ray tasks.

Submodules import torch (and Ray) lazily, so ``import edgeslim.research.nas`` stays light:
``space`` (encoding), ``supernet`` (torch), ``evolution`` (selection, NumPy), ``latency`` (measured on an engine),
``search`` (the driver), ``cli`` (``edgeslim nas search``).
"""

from __future__ import annotations

__all__ = ["space", "supernet", "evolution", "latency", "search"]
