"""Tasks: how to read a data set, feed a model, decode its output and score it. Registered by name."""

from __future__ import annotations

from ..registry import Registry
from .base import Batch, Task

TASKS: Registry[type[Task]] = Registry("task")
register_task = TASKS.register

from . import classify as _classify  # noqa: E402,F401
from . import detect as _detect  # noqa: E402,F401
from . import embed as _embed  # noqa: E402,F401
from . import ocr_cls as _ocr_cls  # noqa: E402,F401
from . import ocr_det as _ocr_det  # noqa: E402,F401
from . import ocr_rec as _ocr_rec  # noqa: E402,F401
from . import raw as _raw  # noqa: E402,F401


def get_task(name: str, **kwargs) -> Task:
    return TASKS.get(name)(**kwargs)


def list_tasks(pattern: str = "*") -> list[str]:
    return TASKS.names(pattern)


__all__ = ["Task", "Batch", "TASKS", "register_task", "get_task", "list_tasks"]
