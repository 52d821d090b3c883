"""LiteRT engine: onnx2tf conversion at fp32/fp16/dr-int8 of a small conv+dense model against onnxruntime, the
static-shape padding rule, converter failures, parity in a child process, the delivered predict.py (with
`import edgeslim` impossible) and the benchmark worker. One conversion per module: onnx2tf writes fp32, fp16 and
dr-int8 in one run, which the engine reuses."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim import deploy
from edgeslim.engines import get_engine
from edgeslim.engines.base import ConversionError, EngineError, read_meta
from edgeslim.engines.parity import check_parity
from edgeslim.tasks import get_task

SHAPE = (1, 3, 8, 16)
NO_EDGESLIM = ("import runpy, sys; sys.modules['edgeslim'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")


def conv_dense_model() -> onnx.ModelProto:
    """x[1,3,8,16] -> Conv3x3(3->4) -> Relu = feat[1,4,8,16] -> Flatten -> Gemm(512->5) = logits[1,5]. Two outputs,
    one NCHW, so onnx2tf's channel-last layout and output order both have to be undone."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (4 * 8 * 16, 5)).astype(np.float32), "fc"),
             numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["feat"]),
             helper.make_node("Flatten", ["feat"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "fb"], ["logits"])]
    g = helper.make_graph(nodes, "conv_dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
                           helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 4, 8, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime fp32, sample by sample (the model's batch is fixed at 1)."""
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    per = [s.run(None, {"x": x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate([p[j] for p in per]) for j in range(len(per[0]))]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def model():
    return conv_dense_model()


@pytest.fixture(scope="module")
def feeds():
    rng = np.random.default_rng(1)
    return [{"x": rng.uniform(-1, 1, SHAPE).astype(np.float32)} for _ in range(4)]


@pytest.fixture(scope="module")
def converted(model, feeds, tmp_path_factory):
    d = tmp_path_factory.mktemp("litert")
    eng = get_engine("litert")
    return {p: eng.convert(model, d / f"m-{p}.tflite", precision=p, calib_feeds=feeds[:1]) for p in ("fp32", "fp16", "dr-int8")}


def test_fp32_matches_onnxruntime_in_onnx_order_and_layout(model, converted):
    x = np.random.default_rng(2).uniform(-1, 1, (3, *SHAPE[1:])).astype(np.float32)
    runner = get_engine("litert").load(converted["fp32"], 2)
    got, ref = runner.run({"x": x}), ort_run(model, x)
    assert runner.input_names == ["x"] and runner.output_names == ["logits", "feat"]
    assert [g.shape for g in got] == [(3, 5), (3, 4, 8, 16)]  # a batch of 3 ran as 3 invocations
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=0)
    meta = read_meta(converted["fp32"], "litert")
    assert meta["input_shapes"] == {"x": list(SHAPE)} and meta["network_attempts"] == 0
    assert meta["tflite_inputs"][0]["perm"] == [0, 2, 3, 1]  # NCHW fed to an NHWC model
    assert {o["name"]: o["perm"] for o in meta["tflite_outputs"]}["feat"] == [0, 3, 1, 2]


def test_fp16_and_dr_int8_are_smaller_and_close(model, converted):
    sizes = {p: a.stat().st_size for p, a in converted.items()}
    assert sizes["dr-int8"] < sizes["fp16"] < sizes["fp32"]
    assert sizes["dr-int8"] < 0.6 * sizes["fp32"]
    x = np.random.default_rng(3).uniform(-1, 1, (2, *SHAPE[1:])).astype(np.float32)
    ref = ort_run(model, x)
    for p, bound in (("fp16", 0.01), ("dr-int8", 0.1)):
        got = get_engine("litert").load(converted[p], 1).run({"x": x})
        errs = [rel_err(g, r) for g, r in zip(got, ref)]
        assert max(errs) < bound, (p, errs)
        assert max(errs) > 0  # the weights really changed precision
        assert read_meta(converted[p], "litert")["precision"] == p


def test_smaller_feed_is_zero_padded_and_larger_feed_refused(model, converted):
    runner = get_engine("litert").load(converted["fp32"], 1)
    small = np.random.default_rng(4).uniform(0.5, 1, (2, 3, 6, 10)).astype(np.float32)
    padded = np.pad(small, [(0, 0), (0, 0), (0, 2), (0, 6)])
    got, ref = runner.run({"x": small}), ort_run(model, padded)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=0)
    assert np.abs(got[1][:, :, 7:, 11:]).max() > 0  # the pad reaches the output through the conv bias + relu
    with pytest.raises(EngineError, match="larger shape"):
        runner.run({"x": np.zeros((1, 3, 8, 20), np.float32)})


def test_unconvertible_op_is_a_conversion_error_with_the_reason(tmp_path):
    g = helper.make_graph([helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], p=2)], "lp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 7, 15])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with pytest.raises(ConversionError, match="LpPool") as e:
        get_engine("litert").convert(m, tmp_path / "lp.tflite")
    assert "\n" not in str(e.value) and not (tmp_path / "lp.tflite").exists()


def test_parity_in_a_child_process(model, converted, feeds):
    rep = check_parity(model, "litert", converted["fp32"], feeds, threads=1)
    assert rep.passed, rep.reason
    assert rep.samples == len(feeds) and rep.max_abs_err < 1e-4
    rep = check_parity(model, "litert", converted["dr-int8"], feeds, threads=1)
    assert rep.precision == "dr-int8" and rep.max_abs_err > 1e-5


def test_delivered_folder_runs_with_ai_edge_litert_alone(model, converted, tmp_path):
    out = tmp_path / "out"
    info = deploy.export(out, converted["fp32"], "litert", "fp32", get_task("raw").bind(model), 1, "shared",
                         extra={"source_model": model})
    assert info["engine_package"] == "ai-edge-litert" and info["engine_version"] not in ("", "?")
    assert {p.name for p in out.iterdir()} == {"model.tflite", "model.tflite.json", "deploy.json", "predict.py"}
    assert info["inputs"][0]["fixed_shape"] == list(SHAPE) and info["inputs"][0]["shape"] == list(SHAPE)
    assert [o["name"] for o in info["outputs"]] == ["logits", "feat"]
    # narrower than the fixed shape and a batch of 2: the program must pad and loop as the runner does
    x = np.random.default_rng(5).uniform(-1, 1, (2, 3, 8, 12)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    loaded = deploy.load(out)
    preds = loaded.predict(str(tmp_path / "in.npz"))
    ref = ort_run(model, np.pad(x, [(0, 0), (0, 0), (0, 0), (0, 4)]))
    np.testing.assert_allclose(preds["feat"], ref[1], atol=1e-4, rtol=0)
    expected = "".join(f"{n}\t{list(y.shape)}\t{y.ravel()[:8]}\n" for n, y in preds.items())
    script = tmp_path / "predict.py"
    script.write_text(deploy.snippet(out))
    p = subprocess.run([sys.executable, "-c", NO_EDGESLIM, str(script), str(out), str(tmp_path / "in.npz")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout == expected
    assert json.loads((out / "deploy.json").read_text())["runtime"]["options"]["op_resolver"] == "BUILTIN"
    # a bare .tflite with its sidecar loads too
    bare = deploy.load(converted["fp32"])
    assert bare.engine == "litert" and np.array_equal(bare.run({"x": x})[1], loaded.run({"x": x})[1])


def test_benchmark_worker_times_litert(model, converted, feeds, tmp_path):
    from edgeslim.bench import BenchSpec, bench_rounds

    onnx.save(model, str(tmp_path / "m.onnx"))
    specs = [BenchSpec(id="ort", engine="ort", artifact=str(tmp_path / "m.onnx")),
             BenchSpec(id="litert", engine="litert", artifact=str(converted["fp32"]))]
    res, _ = bench_rounds(specs, feeds[0], threads=1, rounds=2, policy="shared", target_round_s=0.05, max_repeats=20)
    assert all(r.ok for r in res), [r.reason for r in res]
    assert len(res[1].ratios) == 2 and all(r > 0 for r in res[1].ratios) and res[1].times_ms
