"""Engine interface: convert an fp32 ONNX model at a precision, load the artifact, run named feeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import onnx

from ..errors import EdgeslimError, InvalidParameterError
from ..policy import ThreadPolicy

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


CPU_POLICIES = tuple(p.value for p in ThreadPolicy)


def thread_policy(policy: str | ThreadPolicy) -> dict:
    """deploy.json's `runtime.thread_policy` for a policy (see `edgeslim.policy.ThreadPolicy`).

    >>> thread_policy("shared")["OMP_WAIT_POLICY"]
    'PASSIVE'
    """
    return ThreadPolicy.of(policy).to_dict()


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
    # the converted model runs at one input shape: the study passes `input_shapes=` ({input: shape}, batch 1), the
    # largest shape of its data, so every sample fits (smaller ones are padded by the runner)
    static_shapes = False
    # whether `optimize` with no --engines tries this engine (when installed); an engine that is slow to convert and
    # measured not to win on the main job is asked for by name instead (--engines NAME)
    in_default_search = True

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

    def load(self, artifact: Path, threads: int, policy: str = ThreadPolicy.DEDICATED) -> Runner:
        """A runner with `threads` threads whose idle pool follows `policy` (see `thread_policy`)."""
        raise NotImplementedError

    def artifact_files(self, artifact: Path) -> list[Path]:
        """Every file the artifact consists of (the artifact first)."""
        return [Path(artifact)]

    # facts of a converted artifact's sidecar that the study shows on the candidate (results.json `info`)
    info_keys: tuple[str, ...] = ("note", "int8_weights", "int8_layers", "calibration", "search", "bf16_layers", "codebook")

    def candidate_info(self, artifact: Path) -> dict:
        """What a study records of a converted artifact: its sidecar's `info_keys` that are present."""
        meta = read_meta(artifact, self.name)
        return {k: meta[k] for k in self.info_keys if k in meta}

    def size_bytes(self, artifact: Path) -> int:
        return sum(p.stat().st_size for p in self.artifact_files(Path(artifact)) if p.exists())

    # ---- deployment: what an output folder holds for this engine ------------------------------------------------

    # the Python package a delivered folder needs (what predict.py imports and deploy.json names)
    package = "?"
    # the engine's files in an output folder, by role, and the role of the main one (the file `load` is given)
    model_files: dict[str, str] = {}
    main_role = "?"
    # what each role is, for deploy.json's file list
    roles: dict[str, str] = {}

    def deploy_layout(self, artifact: Path, source: Any | None) -> dict:
        """How a candidate's artifact becomes an output folder: `{"copies": {src path: name in the folder},
        "options": engine runtime options (deploy.json runtime.options), "inputs", "outputs": [{name, shape, dtype}],
        "note": optional text for deploy.json's runtime}`. `source` is the ONNX model (path or ModelProto) the artifact
        came from, for the shapes an engine file does not carry."""
        raise NotImplementedError

    def bare_files(self, path: Path) -> dict[str, str] | None:
        """`model_files` of a model file given outside an output folder, when this engine runs it; else None."""
        return None

    def template_path(self) -> Path:
        """The engine part of the delivered predict.py: a module defining `make_runner(ROOT, D) -> run(feeds)` that
        imports only the engine's package and numpy (edgeslim/engines/templates/<name>.py)."""
        return Path(__file__).parent / "templates" / f"{self.name}.py"


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


def sidecar_files(path: Path, engine: str, files: dict[str, str]) -> dict[str, str] | None:
    """`files` when `path` has an edgeslim sidecar naming `engine` (how mnn and ncnn recognise a bare model file)."""
    mp = meta_path(path)
    if not mp.is_file():
        return None
    try:
        meta = json.loads(mp.read_text())
    except ValueError:
        return None
    return files if isinstance(meta, dict) and meta.get("engine") == engine else None
