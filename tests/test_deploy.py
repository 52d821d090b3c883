"""The output folder as a deliverable: for each engine, convert the default model, export it, then run the folder
two ways, with the generated snippet (a fresh process where `import edgeslim` fails) and with `deploy.load`; both
must decode exactly what evaluation decodes with the same engine runner."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeslim import deploy
from edgeslim.deploy import DeployError
from edgeslim.engines import get_engine
from edgeslim.engines.base import meta_path
from edgeslim.tasks import get_task
from edgeslim.tasks.base import evaluate
from edgeslim.tasks.ocr_rec import BUNDLED, read_labels

N_LINES = 6
THREADS = 2
# Runs a script with `import edgeslim` made impossible, so the snippet proves it needs only the engine's package.
NO_EDGESLIM = ("import runpy, sys; sys.modules['edgeslim'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="module")
def model(default_model_path):
    return onnx.load(str(default_model_path))


@pytest.fixture(scope="module")
def lines():
    rows = read_labels(BUNDLED / "labels.tsv")[:N_LINES]
    return [str(BUNDLED / name) for _, name, _ in rows], [text for _, _, text in rows]


def run_snippet(outdir: Path, inputs: list[str], tmp: Path) -> tuple[list[str], str]:
    code = deploy.snippet(outdir)
    assert not re.search(r"^\s*(import|from)\s+edgeslim", code, re.M) and "edgeslim." not in code
    script = tmp / "snippet.py"
    script.write_text(code, encoding="utf-8")
    p = subprocess.run([sys.executable, "-c", NO_EDGESLIM, str(script), str(outdir), *inputs], capture_output=True,
                       text=True, encoding="utf-8", timeout=120, cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    # MNN prints a CPU-feature line of its own; predictions are `input<TAB>text` lines.
    preds = [line.split("\t", 1) for line in p.stdout.split("\n") if "\t" in line]
    assert [i for i, _ in preds] == inputs, p.stdout
    return [t for _, t in preds], code


def check_deliverable(engine: str, precision: str, model, model_path: Path, lines, tmp: Path, artifact: Path) -> dict:
    paths, labels = lines
    task = get_task("ocr-rec").bind(model)
    runner = get_engine(engine).load(artifact, THREADS, "shared")
    expected, _ = evaluate(runner, task, task.samples_from(paths))
    assert sum(e == t for e, t in zip(expected, labels)) >= N_LINES - 2  # the model reads these lines

    out = tmp / "out"
    info = deploy.export(out, artifact, engine, precision, task, THREADS, "shared",
                         extra={"source_model": model_path, "candidate": f"{engine}/{precision}"})
    on_disk = json.loads((out / "deploy.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(info, default=str))
    assert on_disk["engine"] == engine and on_disk["precision"] == precision and on_disk["engine_version"] not in ("", "?")
    assert on_disk["runtime"]["threads"] == THREADS and on_disk["runtime"]["thread_policy"]["policy"] == "shared"
    assert on_disk["inputs"][0]["name"] == "x" and on_disk["inputs"][0]["shape"][1] == 3
    assert on_disk["outputs"][0]["shape"][-1] == len(task.charset)
    listed = {f["name"] for f in on_disk["files"]}
    assert set(get_engine(engine).model_files.values()) <= listed and "charset.txt" in listed
    assert listed | {"deploy.json"} == {p.name for p in out.iterdir()}
    assert on_disk["task"]["postprocess"]["charset"]["entries"] == len(task.charset)

    got, _ = run_snippet(out, paths, tmp)
    assert got == expected
    loaded = deploy.load(out)
    assert loaded.task.charset == task.charset  # ' ' and '\u3000' included, blank first
    assert loaded.predict(paths) == expected
    return on_disk


def test_ort_folder_runs_with_onnxruntime_alone(model, default_model_path, lines, tmp_path):
    d = check_deliverable("ort", "fp32", model, default_model_path, lines, tmp_path, default_model_path)
    assert d["runtime"]["options"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert d["runtime"]["thread_policy"]["ort_session_config"]["session.intra_op.allow_spinning"] == "0"


def test_mnn_folder_runs_with_mnn_alone(model, default_model_path, lines, tmp_path):
    art = get_engine("mnn").convert(model, tmp_path / "c.mnn", precision="fp32")
    d = check_deliverable("mnn", "fp32", model, default_model_path, lines, tmp_path, art)
    assert d["runtime"]["options"] == {"backend": "CPU", "precision": "normal", "memory": "normal"}


def test_ncnn_bf16_folder_carries_param_blobs_and_options(model, default_model_path, lines, tmp_path):
    art = get_engine("ncnn").convert(model, tmp_path / "c.ncnn.bin", precision="bf16")
    d = check_deliverable("ncnn", "bf16", model, default_model_path, lines, tmp_path, art)
    out = tmp_path / "out"
    assert (out / "model.ncnn.param").read_text() == art.with_suffix(".param").read_text()
    assert d["runtime"]["options"]["use_bf16_storage"] is True
    assert d["inputs"][0]["ncnn_blob"] == "in0" and d["outputs"][0]["ncnn_blob"] == "out0"
    # The options matter on these lines: without the bf16 flags ncnn decodes differently, so a snippet that dropped
    # them would have failed above.
    fp32 = tmp_path / "fp32" / "c.ncnn.bin"
    fp32.parent.mkdir()
    for src in (art, art.with_suffix(".param")):
        shutil.copy(src, fp32.parent / src.name)
    meta = json.loads(meta_path(art).read_text())
    meta["options"] = {k: False for k in meta["options"]}
    meta_path(fp32).write_text(json.dumps(meta))
    task = get_task("ocr-rec").bind(model)
    paths = lines[0]
    bf16_texts, _ = evaluate(get_engine("ncnn").load(art, THREADS), task, task.samples_from(paths))
    fp32_texts, _ = evaluate(get_engine("ncnn").load(fp32, THREADS), task, task.samples_from(paths))
    assert bf16_texts != fp32_texts


def test_raw_folder_and_bare_onnx(tiny, tmp_path):
    m = onnx.load(str(tiny))
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    from conftest import run_ort

    ref = run_ort(m, {"x": x})[0]
    bare = deploy.load(tiny)  # a bare .onnx: ort fp32, raw task
    assert bare.engine == "ort" and bare.task.name == "raw"
    assert np.array_equal(bare.predict({"x": x})["y"], ref)
    out = tmp_path / "out"
    deploy.export(out, tiny, "ort", "fp32", get_task("raw").bind(m), 1, "dedicated")
    d = deploy.load(out)
    assert np.array_equal(d.predict(str(tmp_path / "in.npz"))["y"], ref) and np.array_equal(d.run({"x": x})[0], ref)
    code = deploy.snippet(out)
    script = tmp_path / "s.py"
    script.write_text(code)
    p = subprocess.run([sys.executable, "-c", NO_EDGESLIM, str(script), str(out), str(tmp_path / "in.npz")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("y\t[2, 5]\t")


def test_charset_reads_back_exactly_and_edits_are_caught(tiny, tmp_path):
    charset = ["<blank>", "a", " ", "\u3000", "b ", "\t", ""]
    task = get_task("ocr-rec", charset=charset)
    out = tmp_path / "out"
    d = deploy.export(out, tiny, "ort", "fp32", task, 1, "dedicated")
    ref = d["task"]["postprocess"]["charset"]
    assert ref["file"] == "charset.txt" and ref["entries"] == len(charset)
    assert deploy.load(out).task.charset == charset
    txt = (out / "charset.txt").read_text(encoding="utf-8")
    (out / "charset.txt").write_text(txt.rstrip() + "\n", encoding="utf-8")  # an editor stripping trailing spaces
    with pytest.raises(DeployError, match="entries"):
        deploy.load(out)
    # An entry with a line break cannot be one line: the charset goes to JSON instead.
    out2 = tmp_path / "out2"
    d2 = deploy.export(out2, tiny, "ort", "fp32", get_task("ocr-rec", charset=["<blank>", "a\nb", " "]), 1, "dedicated")
    assert d2["task"]["postprocess"]["charset"]["file"] == "charset.json"
    assert deploy.load(out2).task.charset == ["<blank>", "a\nb", " "]


def test_load_and_export_errors(tiny, tmp_path):
    with pytest.raises(DeployError, match="no deploy.json"):
        deploy.load(tmp_path)
    with pytest.raises(DeployError, match="not found"):
        deploy.load(tmp_path / "missing.onnx")
    (tmp_path / "m.mnn").write_bytes(b"x")
    with pytest.raises(DeployError, match="m.mnn.json"):
        deploy.load(tmp_path / "m.mnn")
    with pytest.raises(DeployError, match="no deployment layout"):
        deploy.export(tmp_path / "o", tiny, "tflite", "fp32", get_task("raw"), 1, "dedicated")
    with pytest.raises(ValueError, match="policy"):
        deploy.export(tmp_path / "o", tiny, "ort", "fp32", get_task("raw"), 1, "idle")
    assert not (tmp_path / "o").exists()


def test_optimize_delivers_a_folder_the_engine_runs_alone(default_model_path, lines, tmp_path):
    """The whole path: optimize (tiny settings) -> the delivered folder -> its predict.py with the engine alone
    reproduces what edgeslim's loader predicts, which is what evaluation computes."""
    import edgeslim

    res = edgeslim.optimize(recipes="fp32", engine_precisions="ncnn:bf16", objective="size", eval_limit=12,
                            calib_limit=8, rounds=2, confirm_top=1, cache=False, outdir=tmp_path / "out")
    out = tmp_path / "out"
    spec = json.loads((out / "deploy.json").read_text())
    assert spec["engine"] == res.selected.engine and (out / "predict.py").read_text() == deploy.snippet(out)
    for f in spec["files"]:
        assert (out / f["name"]).is_file()
    paths, _ = lines
    alone, _ = run_snippet(out, paths, tmp_path)
    assert alone == edgeslim.load(out).predict(paths)
