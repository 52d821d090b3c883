"""Engine interface: convert an fp32 ONNX model at a precision, load the artifact, run named feeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import onnx

from ..errors import EdgeslimError, InvalidParameterError

__all__ = ["Engine", "Runner", "Feeds", "EngineError", "EngineUnavailableError", "ConversionError", "ParityError",
           "CPU_POLICIES", "thread_policy", "read_meta", "write_meta", "meta_path"]

Feeds = dict[str, np.ndarray]
INSTALL_HINT = "pip install 'edgeslim[engines]'"


class EngineError(EdgeslimError, RuntimeError):
    """An engine cannot convert, load or run a model."""


class EngineUnavailableError(EngineError):
    """The engine's package is not installed."""


class ConversionError(EngineError):
    """An engine's converter rejected the model, crashed or hung; the message carries its last stderr line."""


class ParityError(EngineError):
    """A converted model's outputs disagree with onnxruntime fp32 beyond the tolerance (or hold NaN/Inf)."""


CPU_POLICIES = ("dedicated", "shared")


def thread_policy(policy: str) -> dict:
    """What each engine's own API needs to reproduce a policy. dedicated: pool threads spin between runs (fastest on
    an idle CPU); shared: they sleep at once (fastest when other work competes for the cores).

    `OMP_WAIT_POLICY` is read once, when the OpenMP runtime loads (ncnn's `import`), so it belongs in the environment
    of a fresh process; `ncnn_openmp_blocktime` (`net.opt.openmp_blocktime`, ms) only reaches LLVM/Intel OpenMP
    builds: GCC's libgomp, which the PyPI ncnn wheel bundles, ignores it.

    >>> thread_policy("shared")["OMP_WAIT_POLICY"]
    'PASSIVE'
    """
    if policy not in CPU_POLICIES:
        raise InvalidParameterError(f"CPU policy {policy!r} is not one of {', '.join(CPU_POLICIES)}. Use dedicated "
                                    "on an otherwise idle CPU, shared when other work competes for the cores.")
    spin = policy == "dedicated"
    flag = "1" if spin else "0"
    return {"policy": policy, "OMP_WAIT_POLICY": "ACTIVE" if spin else "PASSIVE",
            "ort_session_config": {"session.intra_op.allow_spinning": flag, "session.inter_op.allow_spinning": flag},
            "ncnn_openmp_blocktime": 20 if spin else 0}


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]
    policy: str

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Engine:
    """Base for engines. Subclasses set `name`, `suffix` and implement `convert` and `load`.

    `convert(model, out, precision=..., calib_feeds=...)` takes the fp32 ONNX model (engines apply their own
    exact graph rewrites) and writes the artifact at `out`; `precisions()` lists what `precision` accepts, the
    first being the fp32 reference. Precisions that quantize activations need `calib_feeds` (an iterable of
    feed dicts, shapes may vary).
    """

    name = "?"
    suffix = ".onnx"
    # what `optimize` tries on this engine unless told (each costs a conversion and an evaluation; the full list is
    # `precisions()`, asked for with `--engine-precisions engine:precision,...`)
    default_precisions: tuple[str, ...] = ("fp32",)

    def version(self) -> str:
        return "?"

    def available(self) -> bool:
        """Whether the engine's package imports here."""
        return True

    def precisions(self) -> tuple[str, ...]:
        return ("fp32",)

    def needs_calibration(self, precision: str) -> bool:
        return False

    def searches(self, precision: str) -> bool:
        """Whether `convert` at this precision takes `score=` and `budget=` (a search scored on calibration data)."""
        return False

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions():
            raise InvalidParameterError(f"precision {precision!r} is not one of engine {self.name}'s: "
                                        f"{', '.join(self.precisions())}. Pick one of those.")

    def convert(self, model: onnx.ModelProto, out: Path, precision: str = "fp32",
                calib_feeds: Iterable[Feeds] | None = None) -> Path:
        raise NotImplementedError

    def load(self, artifact: Path, threads: int, policy: str = "dedicated") -> Runner:
        """A runner with `threads` threads whose idle pool follows `policy` (see `thread_policy`)."""
        raise NotImplementedError

    def artifact_files(self, artifact: Path) -> list[Path]:
        """Every file the artifact consists of (the artifact first)."""
        return [Path(artifact)]

    def size_bytes(self, artifact: Path) -> int:
        return sum(p.stat().st_size for p in self.artifact_files(Path(artifact)) if p.exists())


def meta_path(artifact: Path) -> Path:
    """The sidecar holding what the engine file cannot: ONNX names, precision, runtime options."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_meta(artifact: Path, meta: dict) -> Path:
    p = meta_path(artifact)
    p.write_text(json.dumps(meta, indent=1))
    return p


def read_meta(artifact: Path, engine: str) -> dict:
    p = meta_path(artifact)
    if not p.exists():
        raise EngineError(f"{p} is missing: an {engine} artifact needs the .json written beside it by "
                          f"edgeslim's convert. Convert the model again with `edgeslim convert --to {engine}`.")
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise EngineError(f"{p} is not valid JSON ({e}). Convert the model again.") from None
