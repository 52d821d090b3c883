from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnx


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Engine:
    """Base for engines. Subclasses set `name`, `suffix` and implement `convert` and `load`."""

    name = "?"
    suffix = ".onnx"

    def version(self) -> str:
        return "?"

    def convert(self, model: onnx.ModelProto, out: Path) -> Path:
        raise NotImplementedError

    def load(self, artifact: Path, threads: int) -> Runner:
        raise NotImplementedError
