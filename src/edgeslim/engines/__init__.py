"""Runtimes that execute a candidate: registered by name (`ort` here; `mnn`, `ncnn` as optional extras).

An engine answers three questions: `convert(onnx_model, workdir) -> artifact path` (identity for ort),
`load(artifact, threads) -> Runner`, and `Runner.run(feeds) -> list of outputs` named as in the ONNX model.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Engine, Runner

ENGINES: Registry[type[Engine]] = Registry("engine")
register_engine = ENGINES.register

from . import ort as _ort  # noqa: E402,F401  (registers "ort")


def get_engine(name: str) -> Engine:
    return ENGINES.get(name)()


def list_engines(pattern: str = "*") -> list[str]:
    return ENGINES.names(pattern)


__all__ = ["Engine", "Runner", "ENGINES", "register_engine", "get_engine", "list_engines"]
