"""On-device applications built from optimized models, each a library function plus a thin `edgeslim <app>`
command. Registered by name: the value is the module whose `app` (a typer.Typer, mounted as a command group) or
`command` (a function, mounted as one command) the CLI mounts. Modules are imported only when the CLI starts, and an
app whose optional dependencies are missing is left out rather than breaking the CLI.
"""

from __future__ import annotations

from ..registry import Registry

APPS: Registry[str] = Registry("app")

APPS.register("ocr")("edgeslim.apps.ocr.cli")
APPS.register("face")("edgeslim.apps.face.cli")
APPS.register("objectron")("edgeslim.apps.objectron.cli")

__all__ = ["APPS"]
