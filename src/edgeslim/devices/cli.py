"""`edgeslim device`: set up and inspect devices (mounted by edgeslim.cli as the `device` group)."""

from __future__ import annotations

import json
import time

import typer

from ..errors import EdgeslimError

app = typer.Typer(help="Devices where candidates are evaluated and timed: local, ssh://HOST, qemu-aarch64[:CPU].",
                  no_args_is_help=True)


def _fail(e: EdgeslimError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.command("setup")
def setup_cmd(device: str = typer.Argument(..., help="qemu-aarch64 (build the arm64 root), or ssh://HOST (its venv)"),
              engines: str = typer.Option("ort", help="engines whose packages an ssh device gets, comma-separated"),
              root: str = typer.Option(None, help="qemu: where the root goes (default: the edgeslim cache)"),
              config: str = typer.Option(None, "--ssh-config", help="ssh: an ssh config file (ssh -F)")) -> None:
    """Build a device's environment once: qemu-aarch64's arm64 root (root needed; minutes), an ssh device's venv."""
    from . import parse_device
    from .qemu import setup

    t0 = time.time()
    try:
        if device.split(":", 1)[0] == "qemu-aarch64":
            info = setup(root, progress=lambda m: typer.echo(f"... {m}"))
            typer.echo(f"qemu-aarch64 root: {info['root']} ({info['disk_bytes'] / 1e6:.0f} MB); steps (s): "
                       f"{info['seconds']}; packages: " + ", ".join(f"{k} {info['versions'].get(k.lower(), info['versions'].get(k, '?'))}"
                                                                    for k in info["wheels"]))
        else:
            dev = parse_device(device, **({"config_file": config} if config else {}))
            info = dev.prepare([e.strip() for e in engines.split(",") if e.strip()])
            typer.echo(f"{dev.spec}: venv with {', '.join(info['packages'])} ({'cached' if info.get('cached') else 'installed'})")
    except EdgeslimError as e:
        _fail(e)
    typer.echo(f"done in {time.time() - t0:.0f} s")


@app.command("info")
def info_cmd(device: str = typer.Argument(..., help="local, ssh://HOST or qemu-aarch64[:CPU]"),
             as_json: bool = typer.Option(False, "--json", help="print JSON"),
             config: str = typer.Option(None, "--ssh-config", help="ssh: an ssh config file (ssh -F)")) -> None:
    """What a device is: architecture, CPU and its flags, Python, the engines' package versions there."""
    from . import parse_device

    try:
        dev = parse_device(device, **({"config_file": config} if config and device.startswith("ssh://") else {}))
        d = dev.describe()
    except EdgeslimError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(d, indent=1))
        return
    typer.echo(f"{d['name']} ({d['kind']}{', ' + d['emulated'] if d.get('emulated') else ''})")
    typer.echo(f"  arch     {d['arch']}, {d.get('cores')} cores: {d['cpu']}" + (f" on {d['board']}" if d.get("board") else ""))
    typer.echo(f"  flags    {' '.join(d.get('flags') or []) or '-'}")
    typer.echo(f"  python   {d['python']}{' (venv)' if d.get('venv') else ''}")
    typer.echo("  packages " + (", ".join(f"{k} {v}" for k, v in d.get("packages", {}).items()) or "-"))
    typer.echo(f"  timing   {'yes' if d.get('measures_speed') else 'no: outputs only (emulation)'}")
