from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import onnx


@dataclass
class RecipeContext:
    """What a recipe (and an engine's search) may use.

    `model` is the prepared fp32 model (exact graph rewrites applied, listed in `rewrites`); `calib_feeds()` yields
    calibration batches (any shapes), `calib_count` of them; `calib_drop(model)` scores a candidate ONNX model on the
    calibration samples and returns (metric drop vs the original, fidelity to it), and `score_runner(runner, stage)`
    does the same for any engine's loaded runner — used by searching recipes and engines only. `shared` holds what
    recipes of one study compute once and reuse (calibration ranges and histograms, the best calibrated int8)."""

    model: onnx.ModelProto
    original: onnx.ModelProto
    calib_feeds: Callable[[], Iterable[dict[str, np.ndarray]]]
    calib_drop: Callable[[onnx.ModelProto], tuple[float, dict]] | None = None
    score_runner: Callable[..., tuple[float, dict]] | None = None
    budget: float = 0.005
    threads: int = 2  # for the onnxruntime sessions a recipe runs while building (calibration, bias correction)
    progress: Callable[[str, int, int], None] | None = None
    rewrites: dict[str, Any] = field(default_factory=dict)
    calib_count: int = 0
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecipeOutput:
    model: onnx.ModelProto
    info: dict[str, Any] = field(default_factory=dict)  # e.g. sensitivity table, calibrator, excluded nodes


class Recipe:
    """Base class: subclasses define `Config` (frozen, keyword-only dataclass) and `apply`."""

    name = "?"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: "Recipe.Config | None" = None) -> None:
        self.config = config if config is not None else self.Config()

    @property
    def spec(self) -> str:
        from dataclasses import asdict

        opts = ",".join(f"{k}={v}" for k, v in asdict(self.config).items() if v != getattr(type(self.config)(), k))
        return self.registered_name + (f":{opts}" if opts else "")

    def validate(self) -> None:
        """Check option values before any work (raise `InvalidParameterError` naming the option)."""

    def apply(self, ctx: RecipeContext) -> RecipeOutput:
        raise NotImplementedError
