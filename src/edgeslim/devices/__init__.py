"""Devices: where a candidate is evaluated and timed.

    local                 this machine (today's behaviour)
    ssh://HOST            a phone or board over OpenSSH (HOST: a ~/.ssh/config alias, or USER@HOST:PORT)
    qemu-aarch64[:CPU]    an arm64 Debian root under qemu-user; verifies outputs, never times

A device runs a candidate's deploy folder (`edgeslim.deploy.export`) with the engine's own package and numpy, through
`_remote_worker.py` and the engine's predict.py template shipped beside it; nothing of edgeslim is installed there.
The host makes the inputs and decodes and scores the outputs (`evaluate_on`).

>>> dev = parse_device("ssh://pi@192.168.1.20")                    # doctest: +SKIP
>>> dev.prepare(["ort"]); dev.describe()["cpu"]                     # doctest: +SKIP
'4x Cortex-A76'
>>> preds, nonfinite = evaluate_on(dev, "out/", task, samples)      # doctest: +SKIP
"""

from __future__ import annotations

from .base import DEVICES, Device, DeviceError, evaluate_on, register_device
from . import local as _local  # noqa: E402,F401  (registers "local")
from . import ssh as _ssh  # noqa: E402,F401  (registers "ssh")
from . import qemu as _qemu  # noqa: E402,F401  (registers "qemu-aarch64")

__all__ = ["Device", "DeviceError", "DEVICES", "register_device", "parse_device", "evaluate_on"]


def parse_device(spec: str | Device, **options) -> Device:
    """`local`, `ssh://HOST` or `qemu-aarch64[:CPU]` -> a Device; `options` go to its constructor (ssh: config_file,
    known_hosts, workdir, python; qemu: root)."""
    if isinstance(spec, Device):
        return spec
    s = (spec or "local").strip()
    if s.startswith("ssh://"):
        return DEVICES.get("ssh")(s, **options)
    kind = s.split(":", 1)[0]
    if kind in ("local", "qemu-aarch64"):
        return DEVICES.get(kind)(s, **options)
    try:
        DEVICES.get(kind)
    except Exception:
        raise DeviceError(f"device {spec!r} is not local, ssh://HOST or qemu-aarch64[:CPU]. Write e.g. ssh://pi@board or "
                          "qemu-aarch64:cortex-a53.") from None
    return DEVICES.get(kind)(s, **options)
