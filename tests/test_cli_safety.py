"""The bad-input table, driven through the installed `edgeslim` command: usage errors, numbers, late errors,
output safety (never lose a user's file), signals, sanity checks. Each case asserts the exit code, one line on
stderr, no traceback, nothing left on disk and the previous output intact."""

from __future__ import annotations

import fcntl
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

EDGESLIM = shutil.which("edgeslim") or str(Path(sys.executable).parent / "edgeslim")
FAST = ["--engines", "ort", "--rounds", "1"]


def es(*args, cwd=None, timeout=300, env=None):
    return subprocess.run([EDGESLIM, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env)


PROGRESS_LINE = re.compile(r"^\[\s*\d+ s\] ")  # a stage starting, printed when stderr is not a terminal


def one_line(r, code=2, *needles):
    """The error is one line, after any progress lines (one per stage started before the failure)."""
    assert r.returncode == code, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    while lines and PROGRESS_LINE.match(lines[0]):
        lines.pop(0)
    err = "\n".join(lines)
    assert "Traceback" not in err and len(lines) == 1, err
    for n in needles:
        assert n in err, err
    return err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith((".lock", ".part")))


@pytest.fixture
def raw_data(tmp_path, tiny):
    p = tmp_path / "in.npz"
    np.savez(p, x=np.random.default_rng(0).normal(0, 1, (12, 3, 8, 8)).astype(np.float32))
    return p


@pytest.fixture
def fast_config(tmp_path):
    """A config file that keeps a study to seconds: one round, no confirmation phase, no cache."""
    p = tmp_path / "fast.yaml"
    p.write_text("rounds: 1\nconfirm_top: 0\nengines: ort\ncache: false\n")
    return p


# ---- usage errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    ([], "no command given"),
    (["optimze"], "No such command"),
    (["optimize", "--bogus"], "--bogus"),
    (["bench", "m.onnx", "--threads", "abc"], "--threads"),
    (["optimize", "--json", "true", "extra"], "extra"),
    (["inspect"], "Missing argument"),
])
def test_usage_errors_are_one_line_exit_2(args, needle, tmp_path):
    one_line(es(*args, cwd=tmp_path), 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_version_and_help():
    r = es("--version")
    assert r.returncode == 0 and r.stdout.startswith("edgeslim ")
    r = es("--help")
    assert r.returncode == 0 and "optimize" in r.stdout and r.stderr == ""


# ---- numbers and names, validated before any work ---------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--max-drop", "nan"], "--max-drop"),
    (["--max-drop", "-1"], "--max-drop"),
    (["--max-drop", "inf"], "--max-drop"),
    (["--rounds", "0"], "--rounds"),
    (["--threads", "0"], "--threads"),
    (["--eval-limit", "-5"], "--eval-limit"),
    (["--calib-limit", "0"], "--calib-limit"),
    (["--objective", "speed"], "--objective"),
    (["--cpu", "busy"], "--cpu"),
    (["--recipes", "int8:calibrator=nope"], "calibrator"),
    (["--recipes", "int8:per_channel=maybe"], "per_channel"),
    (["--recipes", "w4:min_elements=x"], "min_elements"),
    (["--recipes", "int9"], "unknown recipe 'int9'"),
    (["--engines", "tflite"], "unknown engine 'tflite'"),
    (["--engine-precisions", "mnn:int9"], "int9"),
    (["--engine-precisions", "mnn"], "engine:precision"),
    (["--task", "segment"], "unknown task"),
])
def test_bad_values_fail_before_any_work(args, needle, tmp_path):
    t0 = time.time()
    r = es("optimize", *args, "-o", tmp_path / "o", cwd=tmp_path)
    one_line(r, 2, needle)
    assert time.time() - t0 < 60  # refused at once, not after building candidates
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_bench_numbers_and_shapes(tmp_path, tiny, default_model_path):
    one_line(es("bench", tiny, "--rounds", "0"), 2, "--rounds")
    # a dynamic width would be timed as 1 pixel: ask for a shape instead
    one_line(es("bench", default_model_path), 2, "dynamic dims", "--shape")
    # a declared or given shape of terabytes is refused before allocating
    one_line(es("bench", tiny, "--shape", "1x3x1048576x1048576"), 2, "GiB")
    one_line(es("inspect", tiny, "--shape", "1x3x1048576x1048576"), 2, "GiB")


def test_quantize_validates_and_never_overwrites(tmp_path, tiny, raw_data):
    out = tmp_path / "q.onnx"
    one_line(es("quantize", tiny, "--recipe", "int8:calibrator=nope", "--task", "raw", "--calib", raw_data, "-o", out), 2,
             "calibrator")
    out.write_text("mine")
    one_line(es("quantize", tiny, "--recipe", "w8:min_elements=1", "--task", "raw", "--calib", raw_data, "-o", out), 2,
             "exists")
    assert out.read_text() == "mine"
    r = es("quantize", tiny, "--recipe", "w8:min_elements=1", "--task", "raw", "--calib", raw_data, "-o", out, "--force")
    assert r.returncode == 0, r.stderr
    onnx.load(str(out))
    assert leftovers(tmp_path) == []


# ---- output safety --------------------------------------------------------------------------------------------

def test_refuses_foreign_folder_and_files(tmp_path, tiny, raw_data, fast_config):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "important.txt").write_text("keep me")
    base = ["optimize", tiny, "--task", "raw", "--data", raw_data, "--config", fast_config]
    one_line(es(*base, "-o", user), 2, "not written by edgeslim")
    assert (user / "important.txt").read_text() == "keep me"
    # a folder holding the input model
    one_line(es(*base, "-o", tiny.parent, cwd=tmp_path / "mine"), 2)
    assert tiny.exists()
    # the working directory
    one_line(es(*base, "-o", ".", cwd=user), 2, "current directory")
    # an existing file
    f = tmp_path / "file.txt"
    f.write_text("data")
    one_line(es(*base, "-o", f), 2, "file of that name exists")
    assert f.read_text() == "data" and not list(tmp_path.glob(".file.txt*"))
    # a location that cannot be written
    one_line(es(*base, "-o", f / "sub"), 2)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["fast.yaml", "file.txt", "in.npz", "mine", "tiny.onnx"]


def test_replaces_own_output_atomically_and_keeps_added_files(tmp_path, tiny, raw_data, fast_config):
    out = tmp_path / "out"
    base = ["optimize", tiny, "--task", "raw", "--data", raw_data, "--config", fast_config, "--recipes", "fp32", "-o", out]
    r = es(*base)
    assert r.returncode == 0, r.stderr
    assert (out / ".edgeslim").exists() and (out / "deploy.json").exists() and (out / "config.yaml").exists()
    first = (out / "results.json").read_text()
    # a stale temp folder of a dead run is removed by the next run
    stale = tmp_path / ".out.tmp-999999-x"
    stale.mkdir()
    r = es(*base)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and leftovers(tmp_path) == []
    # a failing run leaves the previous output as it was
    before = (out / "results.json").read_text()
    one_line(es("optimize", tiny, "--task", "raw", "--data", tmp_path / "nope.npz", "--config", fast_config, "-o", out), 2, "nope.npz")
    assert (out / "results.json").read_text() == before and json.loads(first)["selected"]
    # a file the user added makes the folder theirs too: refused unless --force
    (out / "notes.txt").write_text("mine")
    one_line(es(*base), 2, "notes.txt", "--force")
    assert (out / "notes.txt").exists()
    r = es(*base, "--force")
    assert r.returncode == 0, r.stderr
    assert not (out / "notes.txt").exists() and leftovers(tmp_path) == []


def test_concurrent_run_on_same_output_is_refused(tmp_path, tiny, raw_data, fast_config):
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running edgeslim holds
    try:
        one_line(es("optimize", tiny, "--task", "raw", "--data", raw_data, "--config", fast_config, "-o", out), 2,
                 "another edgeslim run")
    finally:
        os.close(fd)
    assert not out.exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_cleans_up_and_keeps_previous_output(tmp_path, tiny, raw_data, sig, code):
    import psutil

    out = tmp_path / "out"
    out.mkdir()
    (out / ".edgeslim").write_text(json.dumps({"tool": "edgeslim", "files": ["results.json"]}))
    (out / "results.json").write_text("previous")
    # Ctrl-C as a terminal delivers it: a shell that starts the test run in the background (`pytest &`) leaves SIGINT
    # ignored, and an ignored signal stays ignored across exec, so the child gets the default disposition back.
    p = subprocess.Popen([EDGESLIM, "optimize", tiny, "--task", "raw", "--data", raw_data, "--engines", "ort",
                          "--recipes", "fp32,w8", "--rounds", "200", "--no-cache", "-o", out],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc = psutil.Process(p.pid)
        deadline = time.time() + 120
        while time.time() < deadline and not proc.children(recursive=True):  # benchmark workers have started
            time.sleep(0.2)
        time.sleep(1.0)
        kids = proc.children(recursive=True)
        assert kids, "the run never reached the benchmark"
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:  # never leave the run behind
            for k in psutil.Process(p.pid).children(recursive=True):
                k.kill()
            p.kill()
            p.wait()
    assert p.returncode == code, err
    lines = [line for line in err.strip().splitlines() if not PROGRESS_LINE.match(line)]  # stages started before
    assert "Traceback" not in err and len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    assert (out / "results.json").read_text() == "previous"
    assert leftovers(tmp_path) == []
    time.sleep(0.5)
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]


# ---- sanity: a baseline that cannot be right stops the run ----------------------------------------------------

def _color_classifier(path: Path) -> None:
    """x[N,3,8,8] -> per-channel mean -> [red, blue] scores (BGR input: channel 2 is red after the task's RGB flip)."""
    w = np.zeros((3, 2), np.float32)
    w[0, 0] = 1.0  # RGB channel 0 (red) -> class 0
    w[2, 1] = 1.0  # RGB channel 2 (blue) -> class 1
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["y"])], "color",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def _color_images(folder: Path, names: tuple[str, str]) -> None:
    import cv2

    for name in names:
        bgr = (0, 0, 255) if name.endswith("red") else (255, 0, 0)
        (folder / name).mkdir(parents=True)
        for i in range(8):
            img = np.zeros((8, 8, 3), np.uint8) + np.array(bgr, np.uint8)
            img = np.clip(img.astype(int) + i, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / name / f"{i}.png"), img)


def test_classify_baseline_at_chance_stops(tmp_path, fast_config):
    model = tmp_path / "color.onnx"
    _color_classifier(model)
    good, bad = tmp_path / "good", tmp_path / "bad"
    _color_images(good, ("a_red", "b_blue"))
    _color_images(bad, ("a_blue", "b_red"))  # folder order says blue is class 0: every label wrong
    r = es("optimize", model, "--task", "classify", "--data", good, "--config", fast_config, "--recipes", "fp32",
           "--max-drop", "0.01", "-o", tmp_path / "ok", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["candidates"][0]["metric"] == 1.0
    one_line(es("optimize", model, "--task", "classify", "--data", bad, "--config", fast_config, "--recipes", "fp32",
                "-o", tmp_path / "o2"), 2, "chance")
    assert not (tmp_path / "o2").exists()


# ---- config file, record, cache ------------------------------------------------------------------------------

def test_config_file_resolved_and_written_back(tmp_path, tiny, raw_data):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny}\ntask: raw\ndata: {raw_data}\nrecipes: [fp32, w8]\nengines: ort\nrounds: 1\n"
                   f"confirm_top: 0\ncache: false\noutdir: {tmp_path / 'out'}\n")
    r = es("optimize", "--config", cfg, "--rounds", "2", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["config"]["rounds"] == 2 and d["config"]["recipes"] == ["fp32", "w8"]  # the flag wins over the file
    assert d["command"][:2] == ["edgeslim", "optimize"] and d["versions"]["onnxruntime"] != "-"
    assert len(d["model_sha256"]) == 64 and len(d["data"]["sha256"]) == 64 and d["machine"]["flags"] is not None
    import yaml

    back = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert back["rounds"] == 2 and back["task"] == "raw" and back["recipes"] == ["fp32", "w8"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 1\nthreds: 2\n")
    one_line(es("optimize", "--config", bad), 2, "threds", "threads")
    bad.write_text("rounds: [1\n")
    one_line(es("optimize", "--config", bad), 2, "bad.yaml")
    bad.write_text("rounds: many\n")
    one_line(es("optimize", "--config", bad), 2, "rounds")


def test_cache_rerun_reuses_every_candidate(tmp_path, tiny, raw_data):
    env = dict(os.environ, EDGESLIM_CACHE=str(tmp_path / "cache"))
    base = ["optimize", tiny, "--task", "raw", "--data", raw_data, "--engines", "ort", "--recipes", "fp32,w8,bf16",
            "--rounds", "2", "--confirm-top", "1", "--json"]
    r1 = es(*base, "-o", tmp_path / "a", env=env)
    assert r1.returncode == 0, r1.stderr
    d1 = json.loads(r1.stdout)
    r2 = es(*base, "-o", tmp_path / "b", env=env)
    assert r2.returncode == 0, r2.stderr
    d2 = json.loads(r2.stdout)
    assert d1["cache"]["hits"] == 0 and all(c["cached"] for c in d2["candidates"])
    # the benchmark is replayed only when the phases that select (screen, confirm) were not flagged noisy
    selecting_noisy = any(r.startswith(("screen:", "confirm:")) for r in d1["bench"]["noise_reasons"])
    assert bool(d2["bench"].get("cached")) == (not selecting_noisy)
    assert d2["cache"]["hits"] == 4 + (not selecting_noisy)
    if d2["bench"].get("cached"):  # same candidates, same timings: the same selection
        assert d2["selected"] == d1["selected"]
    # (the default job's re-run, with its selection, is measured in benchmarks/cache_rerun.py)
    # one more recipe: only that one is new; the benchmark runs again (ratios are measured in one run)
    r3 = es(*base[:-6], "fp32,w8,bf16,fp16", "--rounds", "2", "--confirm-top", "1", "--json", "-o", tmp_path / "c", env=env)
    assert r3.returncode == 0, r3.stderr
    d3 = json.loads(r3.stdout)
    assert [c["cached"] for c in d3["candidates"]] == [True, True, True, True, False]
    assert not d3["bench"].get("cached")


def test_zoo_download_interrupted_leaves_no_part(tmp_path, monkeypatch):
    from edgeslim import zoo

    class Stream:
        def __init__(self):
            self.n = 0

        def read(self, k):
            self.n += 1
            if self.n > 2:
                raise KeyboardInterrupt
            return b"x" * 10

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo.urllib.request, "urlopen", lambda *a, **k: Stream())
    with pytest.raises(KeyboardInterrupt):
        zoo.resolve("yunet-n")
    assert list(tmp_path.iterdir()) == []


def test_run_and_bench_a_delivered_folder(tmp_path, tiny, raw_data, fast_config):
    out = tmp_path / "out"
    r = es("optimize", tiny, "--task", "raw", "--data", raw_data, "--config", fast_config, "--recipes", "fp32", "-o", out)
    assert r.returncode == 0, r.stderr
    r = es("run", out, raw_data, "-o", tmp_path / "pred.npz")
    assert r.returncode == 0, r.stderr
    import onnxruntime as ort

    x = np.load(raw_data)["x"]
    want = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = np.load(tmp_path / "pred.npz")
    np.testing.assert_allclose(got[got.files[0]], want, rtol=1e-4, atol=1e-5)
    r = es("bench", out, "--rounds", "1", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["engine"] == "ort" and d["input_shapes"]["x"][1:] == [3, 8, 8] and d["latency_ms"]["p50"] > 0
    one_line(es("run", out, tmp_path / "missing.npz", "-o", tmp_path / "p2.npz"), 2, "missing.npz")
    one_line(es("run", tmp_path / "nowhere", raw_data), 2, "nowhere")


def test_outdir_edge_cases(tmp_path, tiny, raw_data, fast_config):
    from edgeslim.errors import InvalidParameterError
    from edgeslim.outdir import OutputDir

    base = ["optimize", tiny, "--task", "raw", "--data", raw_data, "--config", fast_config, "--recipes", "fp32"]
    # inside a data folder: the output would become data
    data_dir = tmp_path / "npz"
    data_dir.mkdir()
    np.savez(data_dir / "a.npz", x=np.load(raw_data)["x"])
    one_line(es("optimize", tiny, "--task", "raw", "--data", data_dir, "--config", fast_config, "-o", data_dir / "out"), 2,
             "inside the data folder")
    # `..` and symlinks do not get past the input check
    (tmp_path / "x").mkdir()
    one_line(es(*base, "-o", tmp_path / "x" / ".." / "x" / ".."), 2)
    (tmp_path / "link").symlink_to(tmp_path)
    one_line(es(*base, "-o", tmp_path / "link"), 2)
    assert tiny.exists() and raw_data.exists()
    # the delivered folder is readable by others (umask 022), like a folder mkdir makes
    out = tmp_path / "out"
    r = es(*base, "-o", out)
    assert r.returncode == 0, r.stderr
    assert (out.stat().st_mode & 0o777) == 0o755
    # an output file edited by the user counts as theirs
    (out / "config.yaml").write_text("mine\n")
    one_line(es(*base, "-o", out), 2, "config.yaml (edited)")
    r = es(*base, "-o", out, "--force")
    assert r.returncode == 0, r.stderr
    # a file added while a run works: the new output is kept beside, not thrown away, and the old one stays
    od = OutputDir(out, force=False)
    with od:
        (od.tmp / "results.json").write_text("{}")
        (out / "added.txt").write_text("mine")
        with pytest.raises(InvalidParameterError, match="kept in"):
            od.commit()
    kept = sorted(tmp_path.glob("out.new-*"))
    assert len(kept) == 1 and (kept[0] / "results.json").read_text() == "{}" and (out / "added.txt").exists()
    assert leftovers(tmp_path) == []


def test_duplicate_and_empty_candidate_lists(tmp_path, tiny, raw_data):
    base = ["optimize", tiny, "--task", "raw", "--data", raw_data, "--engines", "ort", "-o", tmp_path / "o"]
    one_line(es(*base, "--recipes", "fp32,fp32"), 2, "twice")
    one_line(es(*base, "--recipes", "int8,int8:per_channel=true"), 2, "twice")
    one_line(es(*base, "--recipes", "original"), 2, "baseline")
    one_line(es(*base, "--recipes", ""), 2, "nothing to compare")
    assert not (tmp_path / "o").exists()


def test_damaged_cache_entries_are_misses(tmp_path, tiny, raw_data):
    env = dict(os.environ, EDGESLIM_CACHE=str(tmp_path / "cache"))
    base = ["optimize", tiny, "--task", "raw", "--data", raw_data, "--engines", "ort", "--recipes", "fp32,w8",
            "--rounds", "1", "--confirm-top", "0", "--json"]
    r = es(*base, "-o", tmp_path / "a", env=env)
    assert r.returncode == 0, r.stderr
    entries = sorted((tmp_path / "cache" / "runs" / "candidate").iterdir())
    assert len(entries) == 3
    (entries[0] / "blob.pkl").write_bytes(b"garbage")
    (entries[1] / "entry.json").write_text('{"status": "ok"}')
    r = es(*base, "-o", tmp_path / "b", env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert sum(c["cached"] for c in d["candidates"]) <= 1 and d["selected"]


def test_damaged_output_folder_and_model_inputs(tmp_path, tiny, raw_data, fast_config):
    out = tmp_path / "out"
    r = es("optimize", tiny, "--task", "raw", "--data", raw_data, "--config", fast_config, "--recipes", "fp32", "-o", out)
    assert r.returncode == 0, r.stderr
    (out / "model.onnx").unlink()
    one_line(es("run", out, raw_data, "-o", tmp_path / "p.npz"), 2, "model.onnx")
    one_line(es("bench", out), 2, "model.onnx")
    one_line(es("quantize", tiny, "--recipe", "w8", "--task", "raw", "--calib", raw_data, "-o", tiny, "--force"), 2,
             "input")
    assert onnx.load(str(tiny)).graph.node


@pytest.mark.parametrize("blocked,argv,extra", [
    ("ray", ["nas", "search", "--data", "DATA", "-o", "OUT"], "edgeslim[ray]"),
    ("h5py", ["face", "antispoof", "IMG", "--models-dir", "MODELS"], "edgeslim[apps]"),
])
def test_a_missing_extra_is_one_line_naming_it(blocked, argv, extra, tmp_path):
    """An optional part run without its extra installed: one line naming the package and the pip command, exit 2,
    nothing written (the package is hidden from the import system to stand for a machine without it)."""
    data = tmp_path / "data"
    data.mkdir()
    img = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(img), np.full((64, 64, 3), 128, np.uint8))
    from conftest import SHARED

    names = {"DATA": str(data), "OUT": str(tmp_path / "out"), "IMG": str(img), "MODELS": str(SHARED / "models")}
    argv = [names.get(a, a) for a in argv]
    code = f"import sys; sys.modules[{blocked!r}] = None; from edgeslim.cli import main; main({argv!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    one_line(r, 2, repr(blocked), extra)
    assert not (tmp_path / "out").exists()
