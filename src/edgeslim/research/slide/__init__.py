"""SLIDE: LSH-sampled sparse training of extreme classifiers on CPU (Chen et al., MLSys 2020).

Public API: `SlideNetwork` / `SlideConfig` (the network), `HashConfig` / `LSHTables` /
`HASH_FAMILIES` (SimHash, DWTA), `XMCData` / `load_xmc` / `make_synthetic_xmc` (data), and
`fit` / `TRAINERS` (timed training with P@k checkpoints, SLIDE and PyTorch baselines).
Heavy parts (numba, torch) import lazily.
"""

from .data import SyntheticConfig, XMCData, load_xmc, make_synthetic_xmc, save_xmc
from .hashing import HASH_FAMILIES, DWTA, HashConfig, LSHTables, SimHash
from .network import SlideConfig, SlideNetwork, init_params, precision_at_k, warmup
from .train import TRAINERS, FitConfig, FitResult, FitRun, fit, fit_interleaved, make_trainer, time_to_reach

__all__ = [
    "SyntheticConfig",
    "XMCData",
    "load_xmc",
    "make_synthetic_xmc",
    "save_xmc",
    "HASH_FAMILIES",
    "DWTA",
    "HashConfig",
    "LSHTables",
    "SimHash",
    "SlideConfig",
    "SlideNetwork",
    "init_params",
    "precision_at_k",
    "warmup",
    "TRAINERS",
    "FitConfig",
    "FitResult",
    "FitRun",
    "fit",
    "fit_interleaved",
    "make_trainer",
    "time_to_reach",
]
