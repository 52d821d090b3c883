"""ssh:// devices end to end against a throwaway sshd on 127.0.0.1 (this machine plays the device).

Needs OpenSSH's server: apt-get install -y openssh-server. Host and user keys are made per run, the client reads a
temp config (`ssh -F`) and a per-test known_hosts, so the user's own ~/.ssh is never read or written.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ort, tiny_conv_model
from edgeslim.bench import BenchSpec
from edgeslim.deploy import export
from edgeslim.devices import DeviceError, evaluate_on, parse_device
from edgeslim.tasks import get_task

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
ALIAS = "edgeslim-test-device"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub").read_text().split()[:2]


class Sshd:
    """An sshd on a free port of 127.0.0.1 that accepts one key, with its client config and known_hosts."""

    def __init__(self, d: Path) -> None:
        if not os.path.exists(SSHD):
            pytest.fail("sshd not found: the ssh device tests need OpenSSH's server. Run: apt-get install -y openssh-server")
        self.d, self.port = d, _free_port()
        d.mkdir(parents=True, exist_ok=True)
        self.host_key = _keygen(d / "host_key")
        _keygen(d / "user_key")
        shutil.copyfile(d / "user_key.pub", d / "authorized_keys")
        user = getpass.getuser()
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n"
            f"StrictModes no\nPidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\n"
            # bash reads ~/.bashrc for every ssh command unless SHLVL says it is nested: a user's slow rc (pyenv init
            # takes a lock; a session killed by these tests would leave it stale) must not time the tests
            "SetEnv SHLVL=1\n")
        self.known_hosts = d / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(self.host_key)}\n")
        self.config = d / "ssh_config"
        self.config.write_text(f"Host {ALIAS}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {user}\n"
                               f"  IdentityFile {d / 'user_key'}\n  IdentitiesOnly yes\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.log = open(d / "sshd.log", "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
                time.sleep(0.05)

    def device(self, **kw):
        kw = {"config_file": self.config, "known_hosts": self.known_hosts, "workdir": str(self.d / "device"),
              "python": sys.executable, **kw}
        return parse_device(f"ssh://{ALIAS}", **kw)

    def stop(self) -> None:
        """sshd and every session it forked (children first: a killed listener leaves its sessions running)."""
        import psutil

        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    s = Sshd(tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def prepared(sshd):
    dev = sshd.device()
    info = dev.prepare(["ort"], system_site_packages=True)
    return dev, info


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    m = tiny_conv_model(d / "tiny.onnx")
    task = get_task("raw").bind(m)
    export(d / "deploy", d / "tiny.onnx", "ort", "fp32", task, 1, "shared")
    return m, d / "tiny.onnx", d / "deploy", task


def test_alias_and_uri_forms():
    from edgeslim.devices.ssh import parse_ssh

    assert parse_ssh("ssh://board") == ("board", None, None)
    assert parse_ssh("ssh://pi@10.0.0.2:2222") == ("10.0.0.2", "pi", 2222)
    assert parse_ssh("ssh://[fe80::1]:22") == ("fe80::1", None, 22)
    with pytest.raises(DeviceError, match="is not ssh://HOST"):
        parse_ssh("ssh://pi@host:port")


def test_prepare_describe_and_cache(prepared):
    dev, info = prepared
    assert info["packages"] == ["numpy", "onnxruntime"]
    d = dev.describe()
    assert d["arch"] and d["python"] and d["venv"] is True
    assert d["packages"]["onnxruntime"] and d["packages"]["numpy"]
    t0 = time.monotonic()
    assert dev.prepare(["ort"], system_site_packages=True)["cached"] is True  # once, then cached
    assert time.monotonic() - t0 < 10


def test_run_outputs_equal_host(prepared, tiny):
    dev, _ = prepared
    m, _, folder, task = tiny
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(n, 3, 8, 8)).astype(np.float32)} for n in (1, 3)]
    outs = dev.run_outputs(folder, feeds)
    for f, o in zip(feeds, outs):
        np.testing.assert_array_equal(o[0], run_ort(m, f)[0])
    samples = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    preds, nonfinite = evaluate_on(dev, folder, task, samples)
    assert nonfinite == 0 and len(preds) == 3 and all(p is not None for p in preds)


def test_bench_rounds_ratios(prepared, tiny):
    dev, _ = prepared
    _, onnx_path, folder, _ = tiny
    specs = [BenchSpec(id="base", engine="ort", artifact=str(folder)),
             BenchSpec(id="same", engine="ort", artifact=str(onnx_path))]  # a model file is exported on the way
    res, tel = dev.bench_rounds(specs, {"x": np.zeros((1, 3, 8, 8), np.float32)}, threads=1, rounds=3,
                                policy="shared", target_round_s=0.02, pause_s=0.0)
    assert [r.ok for r in res] == [True, True], [r.reason for r in res]
    assert res[0].ratios == [1.0, 1.0, 1.0] and len(res[1].ratios) == 3
    assert 0.2 < res[1].speedup() < 5
    assert tel["device"]["name"] == f"ssh://{ALIAS}" and tel["orders"][1] == ["same", "base"]


def test_changed_host_key_is_refused(sshd, tiny, tmp_path):
    other = _keygen(tmp_path / "other_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other)}\n")
    with pytest.raises(DeviceError, match="host key changed"):
        sshd.device(known_hosts=kh).describe()
    kh.write_text("")
    with pytest.raises(DeviceError, match="not in known_hosts"):
        sshd.device(known_hosts=kh).describe()


def _slow_python(d: Path, mode: str) -> Path:
    """A device Python that, for `mode`, writes its pid and waits before becoming the worker (a run we can kill)."""
    p = d / f"slow-{mode}.sh"
    # one process throughout (sh execs Python, which sleeps, then execs the worker): killing the pid kills the worker
    wait = "import os, sys, time; time.sleep(20); os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
    p.write_text(f'#!/bin/sh\ncase "$2" in {mode}) echo $$ > {d}/{mode}.pid; exec {sys.executable} -c "{wait}" "$@";; esac\n'
                 f'exec {sys.executable} "$@"\n')
    p.chmod(0o755)
    return p


def _wait_pid(path: Path) -> int:
    deadline = time.monotonic() + 20
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, "the slow worker never started"
        time.sleep(0.05)
    return int(path.read_text())


def test_worker_killed_mid_run(sshd, tiny, tmp_path):
    _, _, folder, _ = tiny
    dev = sshd.device(python=str(_slow_python(tmp_path, "outputs")), workdir=str(tmp_path / "dev"))  # no venv there
    killer = threading.Thread(target=lambda: os.kill(_wait_pid(tmp_path / "outputs.pid"), signal.SIGKILL))
    killer.start()
    with pytest.raises(DeviceError, match="worker on the device died"):
        dev.run_outputs(folder, [{"x": np.zeros((1, 3, 8, 8), np.float32)}])
    killer.join()


def test_device_lost_mid_bench(tiny, tmp_path):
    s = Sshd(tmp_path / "sshd")  # its own server: this test kills it
    try:
        _, _, folder, _ = tiny
        dev = s.device(python=str(_slow_python(tmp_path, "serve")))
        killer = threading.Thread(target=lambda: (_wait_pid(tmp_path / "serve.pid"), s.stop()))
        killer.start()
        with pytest.raises(DeviceError, match="lost the device"):
            dev.bench_rounds([BenchSpec(id="a", engine="ort", artifact=str(folder))],
                             {"x": np.zeros((1, 3, 8, 8), np.float32)}, threads=1, rounds=2, start_timeout=30)
        killer.join()
        with pytest.raises(DeviceError, match="could not reach"):
            dev.describe()
    finally:
        if s.proc.poll() is None:
            s.stop()


def test_optimize_on_an_ssh_device_end_to_end(sshd, prepared, tmp_path, monkeypatch):
    """The main job with --device ssh://ALIAS: candidates evaluated and timed on the device, which results.json
    names. (The device is this machine behind a throwaway sshd; its venv reuses this Python's packages.)"""
    import numpy as np

    import edgeslim.devices as devices
    from edgeslim.study import StudyConfig, optimize

    dev, _ = prepared
    real = devices.parse_device
    monkeypatch.setattr(devices, "parse_device", lambda s, **kw: dev if str(s) == f"ssh://{ALIAS}" else real(s, **kw))
    calls = []
    bench = dev.bench_rounds
    monkeypatch.setattr(dev, "bench_rounds", lambda *a, **kw: calls.append(a[0]) or bench(*a, **kw))
    monkeypatch.setattr(dev, "prepare", lambda engines, **kw: type(dev).prepare(dev, engines, system_site_packages=True))
    model, data = tmp_path / "m.onnx", tmp_path / "in.npz"
    tiny_conv_model(model)
    np.savez(data, x=np.random.default_rng(0).normal(0, 1, (8, 3, 8, 8)).astype(np.float32))
    res = optimize(StudyConfig(model=str(model), task="raw", data=str(data), recipes=("fp32",), engines=("ort",),
                               rounds=2, confirm_top=0, cache=False, device=f"ssh://{ALIAS}"), tmp_path / "w")
    d = res.to_dict()
    assert d["machine"]["device"]["name"] == f"ssh://{ALIAS}" and d["machine"]["device"]["kind"] == "ssh"
    assert [s.id for s in calls[0]] == ["ort/original", "ort/fp32"]  # the screen was timed through the device
    assert all(len(c.ratios) == 2 and c.speedup for c in res.candidates)
    assert d["telemetry"]["device"]["name"] == f"ssh://{ALIAS}"  # the timing conditions say where they were taken
    assert res.selected is not None and res.candidate("ort/fp32").metric is not None
