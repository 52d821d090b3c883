"""`ssh://HOST`: a phone or board reached with the system's OpenSSH client.

HOST is read as ssh reads it: an alias of ~/.ssh/config (or of `config_file`, passed as `ssh -F`) with its HostName,
Port, User and IdentityFile, or USER@HOST:PORT. Host keys are checked strictly (StrictHostKeyChecking=yes against the
user's known_hosts, or `known_hosts` for this device only): an unknown or changed key refuses the device; edgeslim
never accepts a key on its own. Commands run without a terminal (BatchMode: no password prompt can hang a study).

Files travel as a tar stream over one ssh command (`tar -x` on the device) rather than scp or rsync: one connection
per folder, atomic by a rename on the device, and no dependency beyond tar, which every Linux userland (Android's
toybox included) has.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from .base import Device, DeviceError, _last_line, register_device, tar_bytes

__all__ = ["SshDevice", "parse_ssh"]

DEFAULT_WORKDIR = ".cache/edgeslim-device"  # relative: ssh sessions start in the user's home


def parse_ssh(spec: str) -> tuple[str, str | None, int | None]:
    """`ssh://[USER@]HOST[:PORT]` -> (host, user, port); a HOST without user and port may be a config alias."""
    rest = spec[len("ssh://"):] if spec.startswith("ssh://") else spec
    rest = rest.rstrip("/")
    user, _, hostport = rest.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):  # [IPv6]:port
        host, _, tail = hostport[1:].partition("]")
        port = tail[1:] or None
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    if not host or (port is not None and not str(port).isdigit()):
        raise DeviceError(f"{spec!r} is not ssh://HOST, ssh://USER@HOST or ssh://USER@HOST:PORT. Write e.g. "
                          "ssh://pi@192.168.1.20:22 or ssh://myboard (an alias in ~/.ssh/config).")
    return host, user or None, int(port) if port else None


@register_device("ssh")
class SshDevice(Device):
    kind = "ssh"

    def __init__(self, spec: str, *, config_file: str | Path | None = None, known_hosts: str | Path | None = None,
                 workdir: str = DEFAULT_WORKDIR, python: str = "python3", connect_timeout: int = 10) -> None:
        super().__init__(spec if spec.startswith("ssh://") else f"ssh://{spec}")
        self.host, self.user, self.port = parse_ssh(self.spec)
        self.config_file, self.known_hosts = config_file, known_hosts
        self.workdir, self.base_python, self.connect_timeout = workdir, python, connect_timeout
        self._python: str | None = None

    def ssh_args(self) -> list[str]:
        a = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"ConnectTimeout={self.connect_timeout}",
             # a device that stops answering (unplugged, crashed) is noticed within ~15 s, not at TCP's hours
             "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.config_file:
            a += ["-F", str(self.config_file)]
        if self.known_hosts:
            a += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.port:
            a += ["-p", str(self.port)]
        if self.user:
            a += ["-l", self.user]
        return a + [self.host]

    def _remote(self, argv: list[str], mkdir: bool = False) -> str:
        wd = shlex.quote(self.workdir)
        pre = f"mkdir -p {wd} && " if mkdir else ""
        return f"{pre}cd {wd} && exec " + " ".join(shlex.quote(a) for a in argv)

    def _explain(self, stderr: str, code: int, what: str) -> DeviceError:
        low = stderr.lower()
        if "remote host identification has changed" in low or "host key for" in low and "has changed" in low:
            kh = f" -f {self.known_hosts}" if self.known_hosts else ""
            msg = (f"{self.spec}: the host key changed, so ssh refused the device (a reinstalled device, or someone in "
                   f"between). If you know why it changed: ssh-keygen -R {self.host}{kh}, then connect once with ssh to "
                   "accept the new key.")
        elif "host key verification failed" in low or "no matching host key" in low:
            msg = (f"{self.spec}: its host key is not in known_hosts (edgeslim never accepts keys itself). Connect once "
                   f"with `ssh {self.host}` and check the fingerprint, then retry.")
        elif code == 255:
            msg = (f"{self.spec}: {what}: ssh could not reach or lost the device ({_last_line(stderr) or 'exit 255'}). "
                   "Check it is on, reachable and `ssh " + self.host + " true` works.")
        else:
            msg = f"{self.spec}: {what} failed on the device (exit code {code}: {_last_line(stderr) or 'no message'})."
        err = DeviceError(msg)
        err.exit_code = code
        return err

    def _exec(self, argv, what, timeout, input=None, mkdir=False):
        try:
            r = subprocess.run(self.ssh_args() + [self._remote(argv, mkdir)], input=input, capture_output=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.spec}: {what} did not finish within {timeout:.0f} s. Check the device is not "
                              "overloaded or hung, then retry.") from None
        if r.returncode == 255 and argv != ["true"] and self._reachable():
            # ssh reports a remote command killed by a signal as 255 too, like a lost connection
            err = DeviceError(f"{self.spec}: {what}: the worker on the device died (killed, out of memory, or a crash: "
                              f"{_last_line(r.stderr.decode(errors='replace')) or 'no message'}). Check the device's "
                              "memory and logs (dmesg), then retry.")
            err.exit_code = 255
            raise err
        if r.returncode:
            raise self._explain(r.stderr.decode(errors="replace"), r.returncode, what)
        return r.stdout.decode(errors="replace")

    def _reachable(self) -> bool:
        try:
            return subprocess.run(self.ssh_args() + ["true"], capture_output=True, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _popen(self, argv, stderr):
        return subprocess.Popen(self.ssh_args() + [self._remote(argv)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr)

    def _put_tree(self, files, rel):
        q, part = shlex.quote(rel), shlex.quote(rel + ".part")
        script = (f"rm -rf {part} && mkdir -p {part} && tar -xf - -C {part} && rm -rf {q} && mv {part} {q}")
        self._exec(["sh", "-c", script], f"copying {len(files)} files to {rel}", 600, input=tar_bytes(files), mkdir=True)

    def _get(self, rel):
        try:
            r = subprocess.run(self.ssh_args() + [self._remote(["cat", rel])], capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.spec}: reading {rel} back took over 600 s. Check the connection, then retry.") from None
        if r.returncode:
            raise self._explain(r.stderr.decode(errors="replace"), r.returncode, f"reading {rel}")
        return r.stdout

    def _tool(self):
        if self._tool_rel is None:
            self._exec(["true"], "connecting", 60, mkdir=True)  # makes the workdir: later commands cd into it
        return super()._tool()

    def python(self) -> str:
        if self._python is None:
            marker = "venv/edgeslim-prepared.json"
            self._python = "venv/bin/python" if self._has(marker) else self.base_python
        return self._python

    def prepare(self, engines: list[str], *, system_site_packages: bool = False, pins: dict[str, str] | None = None,
                pip_args: list[str] | None = None, timeout: float = 1800.0) -> dict:
        """A venv in the device's edgeslim folder with the engines' packages and numpy, installed by the device's own
        pip (its architecture's wheels); cached: a second call with the same packages returns at once.
        `system_site_packages`: reuse the packages of the device's Python instead of downloading them (a test device
        that is this machine). `pins`: {package: requirement}, e.g. {"onnxruntime": "onnxruntime==1.22.1"}."""
        import json

        from ..engines import get_engine

        packages = sorted({get_engine(e).package for e in engines} | {"numpy"})
        cfg = {"packages": packages, "system_site_packages": system_site_packages, "pins": pins or {},
               "pip_args": list(pip_args or [])}
        self._python = self.base_python  # the venv is being (re)made: the base Python makes it
        self._exec(["true"], "connecting", 60, mkdir=True)
        res = self._worker(["prepare", "venv", json.dumps(cfg)], f"installing {' '.join(packages)}", timeout)
        self._python, self._described = "venv/bin/python", None
        return {**res, "packages": packages}
