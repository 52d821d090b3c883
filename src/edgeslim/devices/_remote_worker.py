"""The program edgeslim ships to a device: it runs a deploy folder there with the engine's own package and numpy.

Imports nothing of edgeslim (the device has only a venv with the engines' wheels): it reads deploy.json and builds
the runner with the engine's `make_runner(ROOT, D)` from `templates/<engine>.py` shipped beside it, the same code a
delivered predict.py runs. Commands (the working directory is the device's edgeslim folder):

    python _remote_worker.py describe                         -> one JSON line: arch, CPU, Python, package versions
    python _remote_worker.py prepare VENV JSON                -> venv with JSON's packages (pip); JSON line of versions
    python _remote_worker.py outputs DEPLOY FEEDS.npz OUT.npz [THREADS]
                                                              -> every batch's outputs; JSON line of per-batch seconds
    python _remote_worker.py serve                            -> the timing protocol below, one JSON object a line

serve, host -> worker: {"op": "load", "deploy", "feeds", "threads", "thread_policy", "env"}, then {"op": "run", "n"}
per round, then EOF. Worker -> host: {"ok": "ready", "pid", "peak_rss_mb", "cpu_s"} after one untimed run;
{"ok": "times", "times_ms", "peak_rss_mb", "cpu_s"} per run message, which first runs once untimed (as
edgeslim._bench_worker does: the first run after idling pays cold caches and parked threads); {"error": "Type: line"}
on any failure. Native libraries print to stdout (MNN, ncnn): the protocol gets its own copy of fd 1 and fd 1 goes to
stderr, so their prints cannot corrupt it.
"""

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INDEX = "__index__"  # the npz entry listing batches and input/output names (names may hold any character)

# MIDR part numbers of common ARM cores: arm64 /proc/cpuinfo names no model, only these.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
             "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4"}
PACKAGES = ("numpy", "onnxruntime", "MNN", "ncnn", "openvino", "ai-edge-litert", "tflite-runtime",
            "opencv-python-headless", "opencv-python")


def _describe_error(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_s():
    t = os.times()
    return t.user + t.system


def describe():
    info = {"arch": platform.machine(), "python": platform.python_version(), "platform": platform.platform(),
            "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "flags": [], "cores_by_model": {}}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    models = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        if "model name" in fields:
            models.append(fields["model name"])
        elif "CPU part" in fields:
            models.append(ARM_PARTS.get(fields["CPU part"].lower(), f"ARM part {fields['CPU part']}"))
        if not info["flags"] and ("flags" in fields or "Features" in fields):
            info["flags"] = sorted((fields.get("flags") or fields.get("Features")).split())
    for m in models:
        info["cores_by_model"][m] = info["cores_by_model"].get(m, 0) + 1
    if models:  # big.LITTLE: name every cluster, the biggest count first
        info["cpu"] = " + ".join(f"{n}x {m}" if len(info["cores_by_model"]) > 1 else m
                                 for m, n in sorted(info["cores_by_model"].items(), key=lambda kv: -kv[1]))
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(p, "rb") as f:
                info["board"] = f.read().rstrip(b"\0").decode("utf-8", "replace")
                break
        except OSError:
            pass
    from importlib import metadata

    info["packages"] = {}
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info["qemu_cpu"] = os.environ.get("QEMU_CPU")
    info["venv"] = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    return info


def prepare(venv, cfg):
    """A venv at `venv` with cfg["packages"] installed by this device's pip (its own architecture's wheels); a marker
    records what it holds, so the next prepare with the same packages returns at once."""
    marker = os.path.join(venv, "edgeslim-prepared.json")
    want = sorted(cfg["packages"])
    try:
        with open(marker) as f:
            if json.load(f).get("packages") == want:
                return {"cached": True, "python": os.path.join(venv, "bin", "python")}
    except (OSError, ValueError):
        pass
    args = [sys.executable, "-m", "venv", "--clear"]
    if cfg.get("system_site_packages"):
        args.append("--system-site-packages")
    subprocess.run(args + [venv], check=True, stdout=sys.stderr)
    py = os.path.join(venv, "bin", "python")
    if cfg.get("system_site_packages"):
        # venv's own --system-site-packages sees the base interpreter's packages only; when the creating Python is
        # itself a venv (a test "device" that is this host), its packages are what should be reused, not downloaded
        import site

        dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
        out = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
        with open(os.path.join(out, "_edgeslim_inherited.pth"), "w") as f:
            f.write("".join(d + "\n" for d in dirs))
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--only-binary=:all:"] + list(cfg.get("pip_args", []))
    subprocess.run(pip + [cfg.get("pins", {}).get(p, p) for p in want], check=True, stdout=sys.stderr)
    with open(marker, "w") as f:
        json.dump({"packages": want, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
    return {"cached": False, "python": py}


def load_runner(deploy, threads=None, thread_policy=None, env=None):
    """(run, D): the engine template's runner for a deploy folder, threads and thread policy optionally replaced."""
    with open(os.path.join(deploy, "deploy.json"), encoding="utf-8") as f:
        D = json.load(f)
    if threads:
        D["runtime"]["threads"] = int(threads)
    if thread_policy:
        D["runtime"]["thread_policy"] = thread_policy
    os.environ.update(env or {})
    # OpenMP reads its idle policy once, when the engine's library loads: before the template's import
    os.environ["OMP_WAIT_POLICY"] = D["runtime"]["thread_policy"]["OMP_WAIT_POLICY"]
    path = os.path.join(HERE, "templates", D["engine"] + ".py")
    spec = importlib.util.spec_from_file_location("edgeslim_template_" + D["engine"], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_runner(deploy, D), D


def read_feeds(path):
    import numpy as np

    with np.load(path) as z:
        index = json.loads(str(z[INDEX]))
        return [{name: z[f"f{i}_{j}"] for j, name in enumerate(names)} for i, names in enumerate(index["batches"])]


def outputs(deploy, feeds_path, out_path, threads=None):
    import numpy as np

    run, _ = load_runner(deploy, threads)
    arrays, counts, seconds = {}, [], []
    for i, feeds in enumerate(read_feeds(feeds_path)):
        t0 = time.perf_counter()
        outs = run(feeds)
        seconds.append(round(time.perf_counter() - t0, 4))
        counts.append(len(outs))
        for j, o in enumerate(outs):
            arrays[f"o{i}_{j}"] = np.asarray(o)
    arrays[INDEX] = np.array(json.dumps({"counts": counts}))
    tmp = out_path + ".part.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out_path)  # the host never reads half a file
    return {"seconds": seconds}


def serve(inp, out):
    def send(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        line = inp.readline()
        if not line:
            return
        msg = json.loads(line)
        if msg.get("op") != "load":
            raise RuntimeError(f"expected a load message first, got {msg.get('op')!r}")
        run, _ = load_runner(msg["deploy"], msg.get("threads"), msg.get("thread_policy"), msg.get("env"))
        feeds = read_feeds(msg["feeds"])[0]
        run(feeds)
        send({"ok": "ready", "pid": os.getpid(), "peak_rss_mb": peak_rss_mb(), "cpu_s": cpu_s()})
        for line in inp:
            n = int(json.loads(line)["n"])
            run(feeds)  # untimed: cold caches and parked threads after idling
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                run(feeds)
                times.append((time.perf_counter() - t0) * 1e3)
            send({"ok": "times", "times_ms": times, "peak_rss_mb": peak_rss_mb(), "cpu_s": cpu_s()})
    except Exception as e:  # reported to the host as this candidate's failure
        try:
            send({"error": _describe_error(e)})
        except OSError:
            pass


def main(argv):
    cmd = argv[0] if argv else ""
    if cmd == "serve":
        proto = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        serve(sys.stdin, proto)
        return 0
    if cmd == "describe" and len(argv) == 1:
        res = describe()
    elif cmd == "prepare" and len(argv) == 3:
        res = prepare(argv[1], json.loads(argv[2]))
    elif cmd == "outputs" and len(argv) in (4, 5):
        res = outputs(argv[1], argv[2], argv[3], argv[4] if len(argv) == 5 else None)
    else:
        sys.stderr.write(__doc__)
        return 2
    sys.stdout.write("EDGESLIM-RESULT " + json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
