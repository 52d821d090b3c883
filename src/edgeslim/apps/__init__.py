"""On-device applications built from optimized models, each a library function plus a thin `edgeslim <app>`
command. Registered by name: the value is the module whose `app` (a typer.Typer, mounted as a command group) or
`command` (a function, mounted as one command) the CLI mounts. Modules are imported only when the CLI starts; an
app whose extra is not installed is mounted as a command that names the extra to install (any other import error is
raised: it is a bug).
"""

from __future__ import annotations

from ..registry import Registry

APPS: Registry[str] = Registry("app")

APPS.register("ocr")("edgeslim.apps.ocr.cli")
APPS.register("face")("edgeslim.apps.face.cli")
APPS.register("objectron")("edgeslim.apps.objectron.cli")

__all__ = ["APPS"]
