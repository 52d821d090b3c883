"""`qemu-aarch64[:CPU]`: an arm64 Debian root run under qemu-user (binfmt_misc), for verifying predictions.

The root is built once by `setup()` under `edgeslim.cache.cache_dir()/devices/qemu-aarch64`: Debian's `debootstrap`
(minbase + python3, python3-venv, python3-pip, ca-certificates), then a venv inside it with the engines' own aarch64
wheels, installed by the root's own pip. Programs run there with `chroot` in a private mount namespace (`unshare`),
so the /proc, /dev and cpuinfo mounts vanish with the process and nothing is left mounted on the host.

Speed is never taken from emulation: qemu-user translates every instruction, so times say nothing about a phone.
`bench_rounds` refuses; `run_outputs` is what this device is for (do arm64 kernels compute what x86 ones do?).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from ..cache import cache_dir
from ..errors import EdgeslimError
from .base import Device, DeviceError, register_device

__all__ = ["QemuDevice", "setup", "default_root", "QEMU_CPUS", "WHEELS"]

QEMU_CPUS = ("cortex-a76", "cortex-a53", "neoverse-n1", "max")
DEFAULT_CPU = "cortex-a76"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
DEB_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
# What setup() installs into the root's venv: every engine package edgeslim can deliver on arm64, and OpenCV, which
# the delivered predict.py's task programs use.
WHEELS = ("numpy", "onnxruntime", "ncnn", "MNN", "opencv-python-headless")
VENV, WORK, CA_FILE = "/opt/edgeslim/venv", "/opt/edgeslim/work", "/opt/edgeslim/host-ca.pem"
BINFMT = Path("/proc/sys/fs/binfmt_misc")

# onnxruntime's bundled cpuinfo library parses /proc/cpuinfo at import and crashes (SIGSEGV / "Unknown CPU
# vendor") on the host's x86 text under qemu-user, which does not translate /proc/cpuinfo. Each emulated CPU gets a
# plausible arm64 cpuinfo, bound over /proc/cpuinfo: the MIDR fields of the real core, and the Features line of
# the HWCAPs qemu reports for that -cpu (what kernels actually dispatch on comes from getauxval, which qemu fills).
_CPUINFO = {
    "cortex-a53": ("0x41", "0x0", "0xd03", "0x4", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a76": ("0x41", "0x4", "0xd0b", "0x1",
                   "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
    "neoverse-n1": ("0x41", "0x3", "0xd0c", "0x1",
                    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"),
    "max": ("0x00", "0x0", "0x051", "0x0",
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 "
            "sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 sveaes svepmull "
            "svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng bti"),
}


def default_root() -> Path:
    return cache_dir() / "devices" / "qemu-aarch64"


def _cpuinfo_text(cpu: str, n: int) -> str:
    impl, var, part, rev, feats = _CPUINFO[cpu]
    block = ("processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {f}\nCPU implementer\t: {impl}\nCPU architecture: 8\n"
             "CPU variant\t: {var}\nCPU part\t: {part}\nCPU revision\t: {rev}\n\n")
    return "".join(block.format(i=i, f=feats, impl=impl, var=var, part=part, rev=rev) for i in range(n))


def _ensure_binfmt() -> None:
    """Register qemu-aarch64 with binfmt_misc (F flag: the kernel opens the interpreter once, so it works inside the
    chroot without a copy), mounting binfmt_misc first where a container left it unmounted."""
    if (BINFMT / "qemu-aarch64").is_file() and "enabled" in (BINFMT / "qemu-aarch64").read_text():
        return
    if shutil.which("update-binfmts") is None or shutil.which("qemu-aarch64-static") is None:
        raise EdgeslimError("qemu-aarch64 needs Debian's qemu-user-static and binfmt-support. Run: apt-get install -y "
                            "qemu-user-static binfmt-support debootstrap")
    if not (BINFMT / "register").exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True)
        if r.returncode:
            raise EdgeslimError(f"cannot mount binfmt_misc ({r.stderr.strip()}). Run as root, or in a container "
                                "started with --privileged, then retry.")
    r = subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, text=True)
    if r.returncode or not (BINFMT / "qemu-aarch64").is_file():
        raise EdgeslimError(f"cannot register qemu-aarch64 with binfmt_misc ({(r.stderr or r.stdout).strip()}). Run: "
                            "update-binfmts --enable qemu-aarch64 (as root).")


def _du_bytes(p: Path) -> int:
    r = subprocess.run(["du", "-sb", "--one-file-system", str(p)], capture_output=True, text=True)
    return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout else 0


def chroot_command(rootfs: Path, argv: list[str], cpu: str = DEFAULT_CPU, env: dict | None = None) -> list[str]:
    """The host command that runs `argv` inside `rootfs` as an emulated `cpu`: a private mount namespace with /proc
    (its cpuinfo replaced by the arm64 one), /dev and the DNS config of the host, then chroot."""
    r = shlex.quote(str(rootfs))
    mounts = [f"mount -t proc proc {r}/proc",
              f"mount --bind {r}/opt/edgeslim/cpuinfo-{cpu} {r}/proc/cpuinfo",
              f"mount --rbind /dev {r}/dev"]
    if Path("/etc/resolv.conf").exists():  # pip needs DNS; the host's file may change between runs
        mounts.append(f"mount --bind /etc/resolv.conf {r}/etc/resolv.conf")
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8",
            "QEMU_CPU": cpu}
    envs = [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
    script = " && ".join(mounts) + f' && exec env -i {" ".join(shlex.quote(e) for e in envs)} chroot {r} "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *argv]


def _run(cmd: list[str], what: str, timeout: float, log: Path | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeslimError(f"qemu-aarch64 setup: {what} did not finish within {timeout:.0f} s. Check the network to "
                            f"{MIRROR} / PyPI and retry.") from None
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}\n")
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        raise EdgeslimError(f"qemu-aarch64 setup: {what} failed ({tail[0][:300]}); full log in {log}. Fix that and run "
                            "`edgeslim device setup qemu-aarch64` again (finished steps are kept).")
    return r


def _default_wheels() -> list[str]:
    """The base wheels and every registered engine's package (an engine added later gets its wheel on the next setup)."""
    from ..engines import ENGINES, get_engine

    return sorted(set(WHEELS) | {get_engine(n).package for n in ENGINES.names()})


def setup(root: str | os.PathLike | None = None, *, wheels: tuple[str, ...] | None = None, mirror: str = MIRROR,
          progress=None) -> dict:
    """Build (or finish building) the arm64 root under `root` (default `default_root()`); returns setup.json's
    content: seconds per step, disk use, package versions inside. Each step leaves a marker, so an interrupted setup
    resumes where it stopped and a finished one returns at once."""
    say = progress or (lambda msg: None)
    root = Path(root) if root is not None else default_root()
    rootfs, log = root / "rootfs", root / "setup.log"
    root.mkdir(parents=True, exist_ok=True)
    info_file = root / "setup.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {"seconds": {}}
    if os.geteuid() != 0:
        raise EdgeslimError("qemu-aarch64 setup needs root (debootstrap, chroot and mounts). Run it as root or with sudo.")
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            raise EdgeslimError(f"qemu-aarch64 setup needs {tool}. Run: apt-get install -y qemu-user-static "
                                "binfmt-support debootstrap")
    _ensure_binfmt()
    if not (root / ".debootstrap-ok").is_file():
        say("debootstrap arm64 root (minbase + python3)")
        if rootfs.exists():
            shutil.rmtree(rootfs)  # a half-made root cannot be resumed by debootstrap
        t0 = time.time()
        _run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(DEB_PACKAGES)}", SUITE,
              str(rootfs), mirror], "debootstrap", 3600, log)
        info["seconds"]["debootstrap"] = round(time.time() - t0, 1)
        (root / ".debootstrap-ok").write_text("")
    _configure(rootfs)
    want = sorted(wheels if wheels is not None else _default_wheels())
    env = {"PIP_CERT": CA_FILE, "SSL_CERT_FILE": CA_FILE, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_DEFAULT_TIMEOUT": "180", **{k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}}
    pip = [f"{VENV}/bin/python", "-m", "pip", "install", "--only-binary=:all:"]
    if not (root / ".venv-ok").is_file():
        say(f"venv with aarch64 wheels: {' '.join(WHEELS)}")
        t0 = time.time()
        _run(chroot_command(rootfs, ["python3", "-m", "venv", "--clear", VENV]), "creating the venv", 600, log)
        _run(chroot_command(rootfs, pip + list(WHEELS), env=env), "pip install " + " ".join(WHEELS), 3600, log)
        info["seconds"]["venv"] = round(time.time() - t0, 1)
        info["wheels"], info["unavailable"] = sorted(WHEELS), {}
        info.pop("versions", None)
        (root / ".venv-ok").write_text("")
    extra = [w for w in want if w not in info.get("wheels", []) and w not in info.get("unavailable", {})]
    for w in extra:  # one at a time: an engine without an aarch64 wheel is recorded, not fatal
        say(f"aarch64 wheel: {w}")
        t0 = time.time()
        try:
            _run(chroot_command(rootfs, pip + [w], env=env), f"pip install {w}", 1800, log)
            info["wheels"] = sorted(set(info["wheels"]) | {w})
        except EdgeslimError as e:
            info.setdefault("unavailable", {})[w] = str(e)
        info["seconds"][f"wheel {w}"] = round(time.time() - t0, 1)
        info.pop("versions", None)
    if "versions" not in info:
        r = _run(chroot_command(rootfs, [f"{VENV}/bin/python", "-m", "pip", "list", "--format=json"]), "pip list", 600, log)
        info["versions"] = {p["name"]: p["version"] for p in json.loads(r.stdout)}
        info.pop("versions_for", None)
    if extra or "disk_bytes" not in info:
        info["disk_bytes"] = _du_bytes(rootfs)
    info["root"] = str(rootfs)
    info_file.write_text(json.dumps(info, indent=1))
    return info


def _configure(rootfs: Path) -> None:
    """The host CA bundle (pip behind a TLS-inspecting proxy needs the host's extra CAs), the arm64 cpuinfo files,
    the work folder."""
    d = rootfs / "opt" / "edgeslim"
    (d / "work").mkdir(parents=True, exist_ok=True)
    for ca in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if ca and Path(ca).is_file():
            shutil.copyfile(ca, d / "host-ca.pem")
            break
    else:
        shutil.copyfile(rootfs / "etc/ssl/certs/ca-certificates.crt", d / "host-ca.pem")
    n = os.cpu_count() or 1
    for cpu in QEMU_CPUS:
        (d / f"cpuinfo-{cpu}").write_text(_cpuinfo_text(cpu, n))


@register_device("qemu-aarch64")
class QemuDevice(Device):
    """`qemu-aarch64[:CPU]`: the root `setup()` built, each program run as `CPU` (QEMU_CPU). Outputs only."""

    kind = "qemu-aarch64"
    measures_speed = False
    arch = "aarch64"

    def __init__(self, spec: str = "qemu-aarch64", *, root: str | os.PathLike | None = None) -> None:
        _, _, cpu = spec.partition(":")
        cpu = cpu or DEFAULT_CPU
        if cpu not in QEMU_CPUS:
            raise EdgeslimError(f"qemu-aarch64:{cpu}: unknown CPU. Use one of {', '.join(QEMU_CPUS)}.")
        super().__init__(f"qemu-aarch64:{cpu}")
        self.cpu = cpu
        self.root = Path(root) if root is not None else default_root()
        self.rootfs = self.root / "rootfs"

    def _ready(self) -> None:
        if not (self.root / ".venv-ok").is_file():
            raise DeviceError(f"{self.spec}: the arm64 root is not set up at {self.root}. Run: edgeslim device setup "
                              "qemu-aarch64 (as root; about 10 minutes and 1.5 GB).")
        _ensure_binfmt()  # binfmt registrations vanish at reboot

    def _exec(self, argv, what, timeout, input=None):
        self._ready()
        cmd = chroot_command(self.rootfs, ["sh", "-c", f'cd {WORK} && exec "$@"', "sh", *argv], self.cpu)
        try:
            r = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.spec}: {what} did not finish within {timeout:.0f} s under emulation. Give it "
                              "fewer samples or a longer timeout.") from None
        if r.returncode:
            tail = [ln for ln in r.stderr.decode(errors="replace").splitlines() if ln.strip()][-1:] or ["no message"]
            how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit code {r.returncode}"
            if r.returncode in (-4, 132, -11, 139):  # SIGILL / SIGSEGV: an instruction this CPU lacks, or a crash
                how += ", an instruction this CPU lacks or a crash"
            err = DeviceError(f"{self.spec}: {what} failed ({how}: {tail[0][:300]}).")
            err.exit_code = r.returncode
            raise err
        return r.stdout.decode(errors="replace")

    def _popen(self, argv, stderr):
        raise EdgeslimError(f"{self.spec}: speed is never taken from emulation.")

    def _put_tree(self, files, rel):
        from .base import copy_tree_atomic

        self._ready()
        copy_tree_atomic(files, self.rootfs / WORK.lstrip("/") / rel)

    def _get(self, rel):
        return (self.rootfs / WORK.lstrip("/") / rel).read_bytes()

    def _has(self, rel):
        return (self.rootfs / WORK.lstrip("/") / rel).exists()

    def _remove(self, rel):
        shutil.rmtree(self.rootfs / WORK.lstrip("/") / rel, ignore_errors=True)

    def python(self) -> str:
        return f"{VENV}/bin/python"

    def prepare(self, engines: list[str], **options) -> dict:
        """`setup()` once (cached), then check the engines' packages are in the root's venv."""
        from ..engines import get_engine

        info = setup(self.root)
        have = {k.lower() for k in info.get("versions", {})}
        want = sorted({get_engine(e).package for e in engines} | {"numpy"})
        missing = [p for p in want if p.lower() not in have]
        if missing:
            raise DeviceError(f"{self.spec}: {missing} not in the arm64 venv (no aarch64 wheel on PyPI?). Run setup with "
                              f"wheels=(...) naming them, or leave those engines out.")
        return {"cached": True, "python": self.python(), "packages": want}

    def describe(self) -> dict:
        d = super().describe()
        d["emulated"] = f"qemu-user {self.cpu}"
        return d

    def bench_rounds(self, *args, **kwargs):
        raise EdgeslimError(f"{self.spec}: speed is never taken from emulation (qemu-user translates every "
                            "instruction). Time on the host or on a real device (ssh://HOST).")
