"""Measured latency of subnets: each exported to ONNX, converted for the chosen engine, and timed in its own worker
process by :func:`edgeslim.bench.bench_rounds`, interleaved with a reference model in the same rounds.

The search compares latencies measured minutes apart on a shared machine, where absolute times drift 2x; a ratio to
a reference timed in the same rounds does not drift, so the objective is ``latency / reference latency`` (the median
of per-round ratios) and the absolute p50 is recorded beside it. FLOPs are never used as the latency.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...policy import ThreadPolicy
from ...errors import InvalidParameterError

__all__ = ["LatencyConfig", "Latency", "measure"]


@dataclass(frozen=True, kw_only=True)
class LatencyConfig:
    """How subnets are timed: engine, threads, batch, rounds of :func:`edgeslim.bench.bench_rounds`."""

    engine: str = "ort"
    threads: int = 1
    batch: int = 1
    rounds: int = 3
    target_round_s: float = 0.1
    policy: str = ThreadPolicy.DEDICATED

    def __post_init__(self) -> None:
        if self.threads < 1 or self.batch < 1 or self.rounds < 1 or self.target_round_s <= 0:
            raise InvalidParameterError(f"LatencyConfig needs threads, batch, rounds >= 1 and target_round_s > 0; got "
                                        f"{self.threads}, {self.batch}, {self.rounds}, {self.target_round_s}.")


@dataclass(frozen=True, kw_only=True)
class Latency:
    """One model's timing: ``ratio`` = its latency / the reference's (same rounds), ``p50_ms`` absolute."""

    ratio: float
    p50_ms: float
    ok: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "p50_ms": self.p50_ms, "ok": self.ok, "reason": self.reason}


def measure(models: dict[str, bytes], reference: bytes, input_shape: tuple[int, ...], config: LatencyConfig,
            input_name: str = "input") -> tuple[dict[str, Latency], dict]:
    """Time every ONNX model of ``models`` (id -> bytes) against ``reference`` in interleaved rounds.

    Returns id -> :class:`Latency` and the run's conditions (telemetry of ``bench_rounds``). A model that fails to
    load or run gets ``ok=False`` and an infinite ratio, so selection never prefers it.
    """
    import onnx

    from ...bench import BenchSpec, bench_rounds
    from ...engines import get_engine

    if "reference" in models:
        raise InvalidParameterError("model id 'reference' is reserved for the reference model; rename it.")
    engine = get_engine(config.engine)
    feeds = {input_name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    with tempfile.TemporaryDirectory(prefix="edgeslim-nas-lat-") as d:
        specs = []
        for mid, blob in [("reference", reference)] + list(models.items()):
            path = engine.convert(onnx.load_from_string(blob), Path(d) / f"{mid}{engine.suffix}")
            specs.append(BenchSpec(id=mid, engine=config.engine, artifact=str(path)))
        results, tel = bench_rounds(specs, feeds, threads=config.threads, rounds=config.rounds, policy=config.policy,
                                    target_round_s=config.target_round_s)
    ref = results[0]
    out = {}
    for r in results[1:]:
        if r.ok and ref.ok and r.ratios:
            out[r.id] = Latency(ratio=round(1.0 / float(np.median(r.ratios)), 4), p50_ms=r.latency()["p50"])
        else:
            out[r.id] = Latency(ratio=float("inf"), p50_ms=float("inf"), ok=False,
                                reason=r.reason or ref.reason or "no timing")
    tel = {**tel, "reference_p50_ms": ref.latency().get("p50")}
    return out, tel
