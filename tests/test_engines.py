"""MNN and ncnn engines: registry contract, conversion + parity on a small model and on the default model (subset),
converter crashes recorded, NaN failing parity, ncnn int8 tables, the convert command, installability."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.engines import available_engines, get_engine, list_engines
from edgeslim.engines.base import ConversionError, EngineUnavailableError, ParityError, read_meta
from edgeslim.engines.parity import check_parity, compare_outputs, convert_checked, parity_path
from edgeslim.errors import EdgeslimError, InvalidParameterError

WIDTHS = (16, 24, 16, 40)


def small_model(*, nan: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,W] -> Conv3x3 -> Relu -> depthwise Conv3x3 -> ReduceMean(H) -> [1,W,8] -> MatMul(8x5) -> Softmax
    (or Sqrt of the logits, which is NaN wherever a logit is negative)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.normal(0, 0.5, (8, 5)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("ReduceMean", ["c2"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "fc"], ["logits"]),
             helper.make_node("Sqrt" if nan else "Softmax", ["logits"], ["probs"], **({} if nan else {"axis": -1}))]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, "w"])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, "w", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def feeds_of(widths=WIDTHS, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (1, 3, 8, w)).astype(np.float32)} for w in widths]


@pytest.fixture(scope="module")
def small():
    return small_model()


# ---- installability and registry contract ---------------------------------------------------------------------

def test_onnx_onnxruntime_mnn_ncnn_import_together():
    code = ("import onnx, onnxruntime, MNN, ncnn, google.protobuf as pb; from onnx import helper;"
            "m = helper.make_model(helper.make_graph([], 'g', [], []));"
            "onnx.checker.check_model(onnx.load_from_string(m.SerializeToString()));"
            "print(pb.__version__, onnx.__version__, onnxruntime.__version__, ncnn.__version__)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-500:]
    assert int(p.stdout.split()[-4].split(".")[0]) >= 6  # onnx needs protobuf >= 6


def test_import_edgeslim_loads_no_engine_package():
    code = "import sys, edgeslim, edgeslim.engines as e; print(e.list_engines()); print('MNN' in sys.modules, 'ncnn' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-500:]
    assert p.stdout.split("\n")[1] == "False False"
    assert "'mnn'" in p.stdout and "'ncnn'" in p.stdout


def test_registry_contract():
    assert {"ort", "mnn", "ncnn"} <= set(list_engines())
    assert set(available_engines()) == {"ort", "mnn", "ncnn", "openvino", "litert"}
    for name in list_engines():
        e = get_engine(name)
        assert e.precisions()[0] == "fp32"
        assert e.available() is True
        with pytest.raises(InvalidParameterError, match="Pick one"):
            e.check_precision("fp7")
    assert get_engine("mnn").needs_calibration("int8") and not get_engine("mnn").needs_calibration("fp32")
    assert get_engine("ncnn").needs_calibration("int8-bf16") and not get_engine("ncnn").needs_calibration("bf16")


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("MNN", "ncnn", "pnnx") else real(n, *a))
    for name in ("mnn", "ncnn"):
        e = get_engine(name)
        assert e.available() is False
        with pytest.raises(EngineUnavailableError, match=r"pip install 'edgeslim\[engines\]'"):
            e.convert(small_model(), tmp_path / f"m{e.suffix}")
    assert "mnn" not in available_engines()


# ---- conversion + parity on a small model ----------------------------------------------------------------------

@pytest.mark.parametrize("engine,precision", [(n, p) for n in list_engines() for p in get_engine(n).default_precisions])
def test_every_engine_default_precision_contract(engine, precision, small, tmp_path):
    """Over the registry: each default precision is one the engine accepts, converts the small model, passes parity
    with its precision's tolerance, loads under both thread policies and reports them."""
    e = get_engine(engine)
    assert precision in e.precisions()
    feeds, kw, width = feeds_of(), {}, WIDTHS[0]
    if e.static_shapes:  # converted at the largest input, as the study converts it; it computes on padded inputs
        big = [1, *np.max([f["x"].shape for f in feeds], axis=0)[1:].tolist()]
        kw = {"input_shapes": {"x": big}}
        feeds = [{"x": np.pad(f["x"], [(0, b - a) for a, b in zip(f["x"].shape, big)])} for f in feeds]
        width = big[-1]
    art = e.convert(small, tmp_path / f"m{e.suffix}", precision=precision, calib_feeds=feeds, **kw)
    assert all(p.exists() for p in e.artifact_files(art)) and e.size_bytes(art) > 0
    rep = check_parity(small, engine, art, feeds, threads=1, precision=precision)
    assert rep.passed, rep.reason
    for policy in ("dedicated", "shared"):
        runner = e.load(art, 1, policy)
        assert runner.policy == policy and runner.run(feeds_of()[0])[0].shape == (1, width, 5)


@pytest.mark.parametrize("engine", ["mnn", "ncnn"])
def test_fp32_conversion_matches_ort_at_every_width(engine, small, tmp_path):
    e = get_engine(engine)
    art = e.convert(small, tmp_path / f"m{e.suffix}", precision="fp32", calib_feeds=feeds_of()[:1])
    assert read_meta(art, engine)["inputs"] == ["x"] and read_meta(art, engine)["outputs"] == ["probs"]
    assert e.size_bytes(art) > 8 * 8 * 4
    runner = e.load(art, 1)
    assert runner.input_names == ["x"] and runner.output_names == ["probs"]
    ort = get_engine("ort").load(small.SerializeToString(), 1)
    for f in feeds_of():  # widths change call to call
        got, ref = runner.run(f)[0], ort.run(f)[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4)
    rep = check_parity(small, engine, art, feeds_of(), threads=1)
    assert rep.passed, rep.reason
    assert rep.samples == 4 and rep.cosine_min > 0.99999 and rep.argmax_agreement == 1.0 and rep.nonfinite == 0


def test_ncnn_int8_writes_table_in_ncnn_format_and_runs(small, tmp_path):
    from edgeslim.engines.ncnn import read_table

    e = get_engine("ncnn")
    art = e.convert(small, tmp_path / "m.ncnn.bin", precision="int8", calib_feeds=feeds_of())
    table = tmp_path / "m.table"
    lines = table.read_text().splitlines()
    weight, bottom = read_table(table)
    # one `<layer>_param_0` line per quantized layer with a scale per output channel, then `<layer> <scale>`
    assert len(weight) == len(bottom) == 2 and len(lines) == 4
    assert all(len(s) == 8 and np.all(s > 0) for s in weight.values())
    assert all(v > 0 for v in bottom.values())
    param = art.with_suffix(".param").read_text()
    assert " 8=2" in param and " 8=1" in param  # conv, depthwise conv switched to int8
    assert e.size_bytes(art) < e.size_bytes(e.convert(small, tmp_path / "f.ncnn.bin", calib_feeds=feeds_of()[:1]))
    rep = check_parity(small, "ncnn", art, feeds_of(), threads=1)
    assert rep.passed and rep.cosine_min > 0.999 and rep.max_abs_err > 0  # close, but really quantized


def test_ncnn_int8_mixed_leaves_the_most_hurt_layers_in_bf16(small, tmp_path):
    """The search asks `score` for each count of bf16 layers (most-hurt first) and keeps the fewest that pass."""
    e = get_engine("ncnn")
    assert e.searches("int8-mixed") and not e.searches("int8")
    seen = []

    def score(path):  # pretend the task tolerates int8 only once one layer is back in bf16
        text = Path(path).with_suffix(".param").read_text()
        n_int8 = text.count(" 8=2") + text.count(" 8=1")
        seen.append(n_int8)
        return (0.0 if n_int8 <= 1 else 0.02), {"exact_match": 1.0, "metric_vs_fp32": 0.0}

    art = e.convert(small, tmp_path / "m.ncnn.bin", precision="int8-mixed", calib_feeds=feeds_of(), score=score,
                    budget=0.01)
    meta = read_meta(art, "ncnn")
    assert seen[0] == 2 and 1 in seen  # all int8 first, then fallback
    assert meta["int8_layers"] == 1 and len(meta["bf16_layers"]) == 1
    ranked = [r["layer"] for r in meta["sensitivity"]]
    assert meta["bf16_layers"] == ranked[:1] and len(ranked) == 2  # the lowest input SQNR went back to bf16
    assert meta["options"]["use_bf16_storage"] and meta["options"]["use_int8_inference"]
    rep = check_parity(small, "ncnn", art, feeds_of(), threads=1)
    assert rep.passed and rep.max_abs_err > 0


def test_mnn_int8_through_the_quantizer_and_qdq(small, tmp_path):
    e = get_engine("mnn")
    q = e.convert(small, tmp_path / "q.mnn", precision="int8-mnnquant", calib_feeds=feeds_of())
    rep = check_parity(small, "mnn", q, feeds_of(), threads=1)
    assert rep.samples == 4 and rep.cosine_min > 0.99 and rep.max_abs_err > 0
    d = e.convert(small, tmp_path / "d.mnn", precision="int8", calib_feeds=feeds_of())
    assert read_meta(d, "mnn")["int8"]["method"].startswith("edgeslim int8 recipe")
    assert check_parity(small, "mnn", d, feeds_of(), threads=1).passed


def test_int8_without_calibration_is_a_clear_error(small, tmp_path):
    for name in ("mnn", "ncnn"):
        e = get_engine(name)
        with pytest.raises(ConversionError, match="calibration feeds"):
            e.convert(small, tmp_path / f"m{e.suffix}", precision="int8")


# ---- crashes and NaN -------------------------------------------------------------------------------------------

def test_converter_crash_is_recorded_not_fatal(tmp_path):
    n = [helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")]
    g = helper.make_graph(n, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    bad = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    msgs = {}
    for name in ("mnn", "ncnn"):
        e = get_engine(name)
        with pytest.raises(ConversionError) as ei:
            e.convert(bad, tmp_path / f"bad{e.suffix}")
        msgs[name] = str(ei.value)
        assert isinstance(ei.value, EdgeslimError) and "\n" not in msgs[name]
        assert not (tmp_path / f"bad{e.suffix}").exists()
    assert msgs["mnn"].startswith("mnn converter failed") and "Converted Failed" in msgs["mnn"]
    assert msgs["ncnn"].startswith("pnnx failed (signal 11)")  # pnnx segfaults on it; we are still alive


def test_hung_tool_is_killed_and_reported():
    from edgeslim.engines._subprocess import describe_failure, run_tool

    run = run_tool([sys.executable, "-c", "import time, sys; print('working', file=sys.stderr); time.sleep(30)"], 1.0)
    assert run.timed_out and not run.ok
    assert "hung" in describe_failure(run, "converter", 1.0)


def test_engine_crash_during_parity_is_a_failed_report(small, tmp_path):
    e = get_engine("ncnn")
    art = e.convert(small, tmp_path / "m.ncnn.bin", calib_feeds=feeds_of()[:1])
    art.with_suffix(".param").write_text("7767517\n1 1\nInput in0 0 1 in0\n")  # no output blob "out0"
    rep = check_parity(small, "ncnn", art, feeds_of()[:2], threads=1)
    assert not rep.passed and rep.samples == 0 and "ncnn runtime failed" in rep.reason


def test_nan_fails_parity_even_when_argmax_agrees():
    ref = [[np.array([[[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]], np.float32)]]
    got = [[np.array([[[0.1, 0.7, np.nan], [0.5, 0.3, 0.2]]], np.float32)]]
    rep = compare_outputs(ref, got, engine="x", precision="fp32")
    assert rep.argmax_agreement == 1.0 and rep.nonfinite == 1
    assert not rep.passed and "1 NaN/Inf" in rep.reason
    got_inf = [[np.array([[[0.1, np.inf, 0.2], [0.5, 0.3, 0.2]]], np.float32)]]
    assert not compare_outputs(ref, got_inf).passed
    assert compare_outputs(ref, ref).passed


def test_collapsed_ctc_model_fails_reduced_precision_parity():
    """A reduced-precision CTC model that reads nothing: blank frames dominate, so cosine and per-frame argmax look
    fine (as mnnquant's KL model did: 0.905 / 0.928) while the decoded text is gone. Parity must fail."""
    from edgeslim.tasks import get_task

    task = get_task("ocr-rec", charset=["<blank>", "a", "b", "c"])
    rng = np.random.default_rng(0)
    ref, got = [], []
    for i in range(8):
        p = np.full((1, 40, 4), 0.01, np.float32)
        p[0, :, 0] = 0.97  # blanks
        for t in range(5, 40, 9):  # four characters, one frame each
            p[0, t, :] = 0.01
            p[0, t, 1 + (t + i) % 3] = 0.97
        ref.append([p])
        g = p.copy()
        g[0, :, 0], g[0, :, 1:] = 0.97, 0.01  # the collapsed model: blank everywhere
        got.append([g + rng.uniform(0, 0.001, g.shape).astype(np.float32)])
    loose = compare_outputs(ref, got, precision="int8")
    assert loose.argmax_agreement >= 0.9 and loose.cosine_min > 0.9  # what used to pass
    rep = compare_outputs(ref, got, precision="int8", decode=task.decode)
    assert not rep.passed and rep.decoded_agreement == 0.0 and "decodes identically" in rep.reason
    assert compare_outputs(ref, ref, precision="int8", decode=task.decode).passed
    # a bf16-like small error that keeps every text passes
    near = [[r[0] * np.float32(1.001)] for r in ref]
    ok = compare_outputs(ref, near, precision="bf16", decode=task.decode)
    assert ok.passed and ok.decoded_agreement == 1.0


@pytest.mark.parametrize("engine", ["mnn", "ncnn"])
def test_nan_in_engine_output_fails_parity_end_to_end(engine, tmp_path):
    m = small_model(nan=True)
    e = get_engine(engine)
    art = e.convert(m, tmp_path / f"n{e.suffix}", calib_feeds=feeds_of()[:1])
    rep = check_parity(m, engine, art, feeds_of(), threads=1)
    assert not rep.passed and rep.nonfinite > 0 and "NaN/Inf" in rep.reason
    with pytest.raises(ParityError, match="NaN/Inf"):
        convert_checked(m, engine, tmp_path / f"c{e.suffix}", parity_feeds=feeds_of(), threads=1)
    saved = json.loads(parity_path(tmp_path / f"c{e.suffix}").read_text())
    assert saved["passed"] is False and saved["nonfinite"] > 0


def test_ncnn_runner_keeps_input_alive_until_extraction(small, tmp_path):
    # ncnn computes lazily at extract(); an input Mat wrapping a freed numpy buffer reads freed memory (NaN when
    # that memory held NaN). The runner must give the same result whatever happens to the caller's array.
    e = get_engine("ncnn")
    art = e.convert(small, tmp_path / "m.ncnn.bin", calib_feeds=feeds_of()[:1])
    runner = e.load(art, 1)
    f = feeds_of()[1]
    want = runner.run({"x": f["x"].copy()})[0]
    got = runner.run({"x": f["x"].astype(np.float64)})[0]  # converted to a temporary float32 array inside run
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)


# ---- the default model (subset) --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ocr():
    from edgeslim.model import load_onnx
    from edgeslim.tasks import get_task
    from edgeslim.zoo import resolve

    m = load_onnx(resolve("ppocrv4-rec"))
    task = get_task("ocr-rec", eval_limit=12).bind(m)
    calib, ev = task.load(None)
    return m, task, calib, ev


@pytest.mark.parametrize("engine", ["mnn", "ncnn"])
def test_default_model_fp32_parity_and_cer(engine, ocr, tmp_path):
    from edgeslim.tasks.base import evaluate
    from edgeslim.tasks.ocr_rec import cer

    m, task, calib, ev = ocr
    widest = max(calib, key=lambda s: s.image.shape[1] / s.image.shape[0])
    feeds = [b.feeds for b in task.batches(calib[:3] + [widest], 1)]
    assert len({f["x"].shape[3] for f in feeds}) >= 2  # parity at more than one line width
    art, rep = convert_checked(m, engine, tmp_path / f"rec{get_engine(engine).suffix}", parity_feeds=feeds,
                               calib_feeds=feeds, threads=2)
    assert rep.passed and rep.cosine_min > 0.9999 and rep.argmax_agreement == 1.0 and rep.nonfinite == 0
    refs = [s.text for s in ev]
    base, _ = evaluate(get_engine("ort").load(m.SerializeToString(), 2), task, ev, batch_size=1)
    preds, nonfinite = evaluate(get_engine(engine).load(art, 2), task, ev, batch_size=1)
    widths = {b.feeds["x"].shape[3] for b in task.batches(ev, 1)}
    assert len(widths) > 1  # evaluated at several line widths
    assert nonfinite == 0 and preds == base and cer(preds, refs) == cer(base, refs)


def test_ncnn_rejects_graph_it_cannot_run(ocr, tmp_path):
    # After an opset upgrade pnnx no longer forms MultiHeadAttention and leaves 5-D reshapes: a clear error.
    from edgeslim.graph import prepare

    m, task, calib, _ = ocr
    prepared, _ = prepare(m)
    feeds = [b.feeds for b in task.batches(calib[:1], 1)]
    with pytest.raises(ConversionError, match="pnnx left ops ncnn cannot run"):
        get_engine("ncnn").convert(prepared, tmp_path / "p.ncnn.bin", calib_feeds=feeds)


# ---- the convert command -----------------------------------------------------------------------------------------

def _cli(args, tmp_path):
    code = "import sys; from edgeslim import cli; sys.argv = ['edgeslim'] + sys.argv[1:]; cli.main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_convert_command_writes_model_and_parity(small, tmp_path):
    onnx.save(small, str(tmp_path / "small.onnx"))
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).uniform(-1, 1, (6, 3, 8, 24)).astype(np.float32))
    p = _cli(["convert", "small.onnx", "--to", "ncnn", "-o", "out/s.ncnn.bin", "--task", "raw", "--data", "in.npz",
              "--parity-samples", "3"], tmp_path)
    assert p.returncode == 0, p.stderr[-800:]
    assert "argmax agreement" in p.stdout and "passed" in p.stdout
    rep = json.loads((tmp_path / "out" / "s.ncnn.bin.parity.json").read_text())
    assert rep["passed"] is True and rep["samples"] == 3 and rep["engine"] == "ncnn"
    assert (tmp_path / "out" / "s.ncnn.param").exists()


def test_convert_command_failing_parity_exits_2(tmp_path):
    onnx.save(small_model(nan=True), str(tmp_path / "nan.onnx"))
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).uniform(-1, 1, (4, 3, 8, 16)).astype(np.float32))
    p = _cli(["convert", "nan.onnx", "--to", "mnn", "-o", "n.mnn", "--task", "raw", "--data", "in.npz"], tmp_path)
    assert p.returncode == 2
    err = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "NaN/Inf" in err[0] and "Use another precision or engine" in err[0]
    assert json.loads((tmp_path / "n.mnn.parity.json").read_text())["passed"] is False
    assert not (tmp_path / "n.mnn").exists() and not list(tmp_path.glob(".n.mnn*"))  # no unchecked model left
    p = _cli(["convert", "nan.onnx", "--to", "mnn", "--precision", "fp7", "-o", "n.mnn", "--task", "raw", "--data", "in.npz"], tmp_path)
    assert p.returncode == 2 and "Pick one of those" in p.stderr


# ---- timing goes through bench_rounds ---------------------------------------------------------------------------

def test_bench_rounds_times_mnn_and_ncnn_workers(small, tmp_path):
    from edgeslim.bench import BenchSpec, bench_rounds

    specs = [BenchSpec(id="ort", engine="ort", artifact=str(get_engine("ort").convert(small, tmp_path / "m.onnx")))]
    for name in ("mnn", "ncnn"):
        e = get_engine(name)
        specs.append(BenchSpec(id=name, engine=name, artifact=str(e.convert(small, tmp_path / f"m{e.suffix}", calib_feeds=feeds_of()[:1]))))
    res, _ = bench_rounds(specs, feeds_of()[0], threads=1, rounds=2, target_round_s=0.05)
    assert [r.ok for r in res] == [True, True, True], [r.reason for r in res]
    assert all(len(r.ratios) == 2 and r.speedup() > 0 for r in res)


def test_conversions_never_ran_mnns_pip_installing_logger():
    # MNN's console scripts import MNN.tools.utils.log, which runs `pip install aliyun-log-python-sdk` (protobuf<6,
    # breaking `import onnx`). Our converters call the native tools directly; after every conversion above, the
    # environment must be as it was. (Runs last in this file.)
    code = "import importlib.util as u, google.protobuf as pb; print(u.find_spec('aliyun') is None, pb.__version__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    absent, version = p.stdout.split()
    assert absent == "True" and int(version.split(".")[0]) >= 6


def _wide_model() -> onnx.ModelProto:
    """x[1,16,8,W] -> Conv3x3(16->64) -> Relu -> Conv3x3(64->64) -> ReduceMean(H) -> MatMul(64x5) -> Softmax: two
    weight blobs large enough (9216, 36864 values) for codebook storage, one too small (320)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_t(4, (64, 16, 3, 3)).astype(np.float32) * 0.1, "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 64).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_t(4, (64, 64, 3, 3)).astype(np.float32) * 0.05, "w2"),
             numpy_helper.from_array(rng.normal(0, 0.5, (64, 5)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c2"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "fc"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    g = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, "w"])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, "w", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_kmeans_codebook_keeps_the_tails_and_beats_uniform_int8():
    from edgeslim.engines.ncnn_format import kmeans_codebook

    w = np.random.default_rng(0).standard_t(3, 40000).astype(np.float32)  # heavy tails, like real conv weights
    table, idx = kmeans_codebook(w)
    assert table.shape == (256,) and idx.dtype == np.uint8 and idx.shape == w.shape
    err = table[idx] - w
    s = np.abs(w).max() / 127
    uniform = np.clip(np.rint(w / s), -127, 127) * s - w
    assert np.sqrt(np.mean(err**2)) < 0.5 * np.sqrt(np.mean(uniform**2))
    assert np.abs(err).max() < 0.05 * np.abs(w).max()  # the largest weights keep levels of their own


def test_ncnn_bf16_w8_stores_codebooks_and_keeps_the_worst_layers_when_the_score_says_so(tmp_path):
    from edgeslim.engines.ncnn_format import CODEBOOK_TAG, _Bin, _blobs, _parse_param, codebook_errors, codebooks

    m, e = _wide_model(), get_engine("ncnn")
    feeds = [{"x": np.random.default_rng(1).uniform(-1, 1, (1, 16, 8, w)).astype(np.float32)} for w in (16, 24)]
    assert e.searches("bf16-w8") and "bf16-w8" in e.precisions()
    full = e.convert(m, tmp_path / "b.ncnn.bin", precision="bf16", calib_feeds=feeds[:1])
    art = e.convert(m, tmp_path / "w.ncnn.bin", precision="bf16-w8", calib_feeds=feeds[:1],
                    score=lambda p: (0.0, {"exact_match": 1.0, "metric_vs_fp32": 0.0}), budget=0.01)
    meta = read_meta(art, "ncnn")
    assert meta["codebook"]["coded_blobs"] == 2 and meta["codebook"]["fp16_layers"] == []
    assert e.size_bytes(art) < 0.6 * e.size_bytes(full)  # uint8 indices vs fp16 weights
    # the file reads back as the codebook values, and ncnn runs it close to onnxruntime fp32
    _, layers = _parse_param(art.with_suffix(".param").read_text())
    data = art.read_bytes()
    b = _Bin(data)
    tags = []
    for L in layers:
        start = b.pos
        if _blobs(L, b) and L.type == "Convolution":
            tags.append(int(np.frombuffer(data, np.uint32, 1, start)[0]))
    assert tags == [CODEBOOK_TAG, CODEBOOK_TAG] and b.pos == len(data)
    rep = check_parity(m, "ncnn", art, feeds, threads=1)
    assert rep.passed and rep.cosine_min > 0.999 and rep.max_abs_err > 0
    # a score that fails while more than one layer is coded: the search keeps the worst-coded layer in fp16
    def strict(path):
        coded = Path(path).read_bytes().count(np.uint32(CODEBOOK_TAG).tobytes())
        return (0.0 if coded <= 1 else 0.02), {"exact_match": 1.0, "metric_vs_fp32": 0.0}

    art2 = e.convert(m, tmp_path / "s.ncnn.bin", precision="bf16-w8", calib_feeds=feeds[:1], score=strict, budget=0.01)
    meta2 = read_meta(art2, "ncnn")
    errors = codebook_errors(codebooks(full.with_suffix(".param").read_text(), full.read_bytes()))
    assert meta2["codebook"]["fp16_layers"] == [max(errors, key=errors.get)] and meta2["codebook"]["coded_blobs"] == 1
    assert [t["kept_layers"] for t in meta2["search"]][:2] == [0, 1]


def _ids_model() -> onnx.ModelProto:
    """Token ids (int64, dynamic length) -> an embedding table lookup -> mean over the sequence: the input side of a
    sentence encoder."""
    table = np.random.default_rng(5).standard_normal((50, 8)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
         helper.make_node("ReduceMean", ["e"], ["y"], axes=[1], keepdims=0)], "ids",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [numpy_helper.from_array(table, "table")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_mnn_takes_integer_inputs_as_integers(tmp_path):
    """MNN runs token ids as int32 (a float32 feed of an integer input breaks its shape computation: no outputs)."""
    pytest.importorskip("MNN")
    import onnxruntime as ort

    m = _ids_model()
    e = get_engine("mnn")
    art = e.convert(m, tmp_path / "ids.mnn", "fp32")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (3, 11):
        ids = np.random.default_rng(n).integers(0, 50, (1, n), dtype=np.int64)
        got = e.load(art, 1).run({"ids": ids})
        assert len(got) == 1
        np.testing.assert_allclose(got[0].reshape(1, 8), sess.run(None, {"ids": ids})[0], rtol=1e-5, atol=1e-6)


def test_pnnx_gets_each_inputs_own_type(small):
    """pnnx refuses an example shape whose type differs from the graph's input (token ids are i64, not f32)."""
    from edgeslim.engines.ncnn import _pnnx_types

    assert _pnnx_types(_ids_model(), ["ids"]) == ["i64"]
    assert _pnnx_types(small, [i.name for i in small.graph.input]) == ["f32"] * len(small.graph.input)
