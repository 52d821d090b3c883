"""Runtimes that execute a candidate: registered by name (`ort`; `mnn`, `ncnn` from the `engines` extra; `openvino` from
the `openvino` extra; `litert` from the `litert` extra).

An engine answers three questions: `convert(onnx_model, workdir) -> artifact path` (identity for ort),
`load(artifact, threads) -> Runner`, and `Runner.run(feeds) -> list of outputs` named as in the ONNX model.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Engine, Runner

ENGINES: Registry[type[Engine]] = Registry("engine")
register_engine = ENGINES.register

from . import ort as _ort  # noqa: E402,F401  (registers "ort")
from . import mnn as _mnn  # noqa: E402,F401  (registers "mnn"; imports MNN only when used)
from . import ncnn as _ncnn  # noqa: E402,F401  (registers "ncnn"; imports ncnn/pnnx only when used)
from . import openvino as _openvino  # noqa: E402,F401  (registers "openvino"; imports openvino/nncf only when used)
from . import litert as _litert  # noqa: E402,F401  (registers "litert"; TensorFlow only in its converter's child process)


def get_engine(name: str) -> Engine:
    return ENGINES.get(name)()


def list_engines(pattern: str = "*") -> list[str]:
    return ENGINES.names(pattern)


DEFAULT_ENGINE = "ort"  # the engine recipes hand their rewritten ONNX models to, and the baseline's


def engine_versions() -> dict[str, str]:
    """{package name: version} of every installed engine (e.g. {"onnxruntime": "1.24.1", "MNN": "3.6.1"})."""
    from importlib import metadata

    out = {}
    for n in available_engines():
        e = get_engine(n)
        try:  # the installed distribution's version: no import of the engine's (heavy) package
            out[e.package] = metadata.version(e.package)
        except metadata.PackageNotFoundError:
            try:
                out[e.package] = str(e.version())
            except Exception:  # a package that imports but cannot say its version
                out[e.package] = "?"
    return out


def available_engines() -> list[str]:
    """Registered engines whose packages are installed."""
    return [n for n in ENGINES.names() if ENGINES.get(n)().available()]


def default_engines() -> list[str]:
    """What `optimize` tries when --engines is not given: the installed engines that are in the default search."""
    return [n for n in available_engines() if ENGINES.get(n)().in_default_search]


__all__ = ["Engine", "Runner", "ENGINES", "register_engine", "get_engine", "list_engines", "available_engines", "engine_versions",
           "DEFAULT_ENGINE", "default_engines"]
