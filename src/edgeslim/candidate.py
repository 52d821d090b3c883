"""A candidate: one (recipe, engine) artifact and everything measured of it, and the words for its outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .policy import StrEnum

__all__ = ["Candidate", "Status", "CACHED_FIELDS"]


class Status(StrEnum):
    OK = "ok"  # built, evaluated within budget (and timed, unless the benchmark failed it)
    REJECTED = "rejected"  # built, but its metric breaks the budget, its outputs hold NaN/Inf, or a secondary check fails
    FAILED = "failed"  # could not be built, evaluated or timed: the reason says why


@dataclass
class Candidate:
    id: str
    recipe: str
    engine: str
    status: Status = Status.OK
    reason: str = ""
    metric: float | None = None
    metric_extra: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None
    speedup_range: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # baseline time / this time, per benchmark round
    size_bytes: int | None = None
    artifact: str | None = None
    nonfinite: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    roofline: dict[str, Any] = field(default_factory=dict)  # estimates on chip profiles (edgeslim.profiles), not measured

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    def to_dict(self) -> dict:
        return {k: (v.value if isinstance(v, Status) else v) for k, v in self.__dict__.items()}


# What the candidate cache keeps of a built and evaluated candidate (timings are never cached with it: ratios are
# measured in one run).
CACHED_FIELDS = ("status", "reason", "metric", "metric_extra", "fidelity", "size_bytes", "artifact", "nonfinite",
                 "seconds", "info")
