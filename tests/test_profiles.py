"""Chip profiles and roofline estimates: counts on hand-built graphs, the roofline's bound, the bundled YAML files,
`edgeslim profiles`, and the estimate table in an optimize report."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgeslim.profiles import (PRECISIONS, Profile, ProfileError, candidate_precision, estimate, graph_costs,
                               list_profiles, load_profile, roofline, validate_profile)
from edgeslim.profiles import _data_dir

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits, opset=17):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _w(name, shape, dtype=np.float32):
    return numpy_helper.from_array((np.random.default_rng(0).random(shape) - 0.5).astype(dtype), name)


def _profile(**kw) -> Profile:
    base = dict(name="toy", title="toy", kind="cpu", cores=None, clock_ghz=None,
                peak_ops_per_s={"fp32": 1e9, "fp16": 2e9, "bf16": None, "int8": 4e9}, memory_bandwidth_bytes_per_s=1e9)
    base.update(kw)
    return Profile(**base)


# ---- counts on hand-built graphs ------------------------------------------------------------------------------

def test_conv_macs_and_bytes():
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
               [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])], [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
               [_w("w", (4, 3, 3, 3)), _w("b", (4,))])
    (c,) = graph_costs(m)
    assert (c.kind, c.mode) == ("conv", "float")
    assert c.macs == 4 * 8 * 8 * (3 * 3 * 3)  # every output: Cin x kh x kw multiply-adds
    assert c.float_elems == 3 * 64 + 4 * 27 + 4 + 4 * 64  # input + weights + bias + output
    assert c.int8_elems == 0 and c.other_bytes == 0


def test_depthwise_conv_is_its_own_kind():
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4)],
               [helper.make_tensor_value_info("x", F, [1, 4, 8, 8])], [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
               [_w("w", (4, 1, 3, 3))])
    (c,) = graph_costs(m)
    assert c.kind == "dwconv" and c.macs == 4 * 64 * 9


def test_matmul_and_gemm_macs():
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", F, [2, 5, 6])],
               [helper.make_tensor_value_info("y", F, [2, 5, 7])], [_w("w", (6, 7))])
    (c,) = graph_costs(m)
    assert c.kind == "matmul" and c.macs == 2 * 5 * 7 * 6 and c.float_elems == 60 + 42 + 70
    g = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1)], [helper.make_tensor_value_info("a", F, [4, 3])],
               [helper.make_tensor_value_info("y", F, [3, 5])], [_w("b", (4, 5)), _w("c", (5,))])
    (c,) = graph_costs(g)
    assert c.kind == "matmul" and c.macs == 3 * 5 * 4  # transA: K is A's first dim


def test_dynamic_input_shape_is_given():
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", F, ["N", 6])],
               [helper.make_tensor_value_info("y", F, ["N", 7])], [_w("w", (6, 7))])
    assert graph_costs(m)[0].macs == 1 * 7 * 6
    assert graph_costs(m, {"x": (10, 6)})[0].macs == 10 * 7 * 6


def test_fusions_views_and_folding():
    """Conv -> BatchNormalization -> Relu runs as one kernel; Reshape moves no data; a weight Transpose is folded."""
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0, 2, 3]),
             helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Reshape", ["r", "shp"], ["y"])]
    inits = [_w("wt", (3, 4, 1, 1)), _w("s", (4,)), _w("bb", (4,)), _w("mu", (4,)),
             numpy_helper.from_array(np.ones(4, np.float32), "var"), numpy_helper.from_array(np.array([1, -1], np.int64), "shp")]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])], [helper.make_tensor_value_info("y", F, [1, 64])], inits)
    costs = graph_costs(m)
    assert [(c.op, c.kind) for c in costs] == [("Conv", "conv"), ("Reshape", "view")]
    assert costs[1].float_elems == 0 and costs[1].other_bytes == 0


def _qdq_conv(weight_only: bool):
    wq = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "wq")
    ws = numpy_helper.from_array(np.full(4, 0.1, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(4, np.int8), "wz")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0)]
    if weight_only:
        nodes += [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])]
    else:
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                  helper.make_node("Conv", ["xd", "w"], ["c"], kernel_shape=[1, 1]),
                  helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
                  helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
                  [helper.make_tensor_value_info("y", F, [1, 4, 4, 4])], [wq, ws, wz, s, z])


def test_qdq_conv_runs_as_one_int8_kernel():
    """Q -> DQ -> Conv -> Q -> DQ: the DQ/Q around the conv fold into it; the Q of the float input and the DQ of the
    float output are passes of their own."""
    costs = graph_costs(_qdq_conv(weight_only=False))
    assert [(c.op, c.kind, c.mode) for c in costs] == [
        ("QuantizeLinear", "quant", "act"), ("Conv", "conv", "qdq"), ("DequantizeLinear", "quant", "act")]
    conv = costs[1]
    assert conv.int8_elems == 3 * 16 + 4 * 3 + 4 * 16 and conv.float_elems == 0
    assert costs[0].float_elems == 48 and costs[0].int8_elems == 48  # float in, uint8 out


def test_weight_only_dequantizes_at_every_run():
    costs = graph_costs(_qdq_conv(weight_only=True))
    assert [(c.op, c.kind, c.mode) for c in costs] == [("DequantizeLinear", "quant", "w8"), ("Conv", "conv", "rtw")]
    assert costs[0].int8_elems == 12 and costs[0].float_elems == 12 and costs[0].ops == 12
    # a measured dequantization rate (elements/s) bounds the pass where the profile knows it
    slow = _profile(kernel_ceilings={"quant:w8:elem": [[10.0, 1e3]]})
    assert roofline(costs[:1], "fp32", slow).seconds == pytest.approx(12 / 1e3)
    assert roofline(costs[:1], "fp32", _profile()).seconds == pytest.approx((12 + 12 * 4) / 1e9)


# ---- the roofline --------------------------------------------------------------------------------------------

def test_roofline_picks_the_bound():
    mm = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", F, [256, 256])],
                [helper.make_tensor_value_info("y", F, [256, 256])], [_w("w", (256, 256))])
    add = _model([helper.make_node("Add", ["a", "b"], ["y"])], [helper.make_tensor_value_info("a", F, [1 << 16]),
                                                               helper.make_tensor_value_info("b", F, [1 << 16])],
                 [helper.make_tensor_value_info("y", F, [1 << 16])], [])
    prof = _profile()
    r = roofline(graph_costs(mm), "fp32", prof)
    assert r.bound == "compute" and r.seconds == pytest.approx(2 * 256 ** 3 / 1e9)  # 2 ops per multiply-add
    r = roofline(graph_costs(add), "fp32", prof)
    assert r.bound == "memory" and r.seconds == pytest.approx(3 * 4 * (1 << 16) / 1e9)
    # the precision decides the peak and the element size
    assert roofline(graph_costs(mm), "fp16", prof).seconds == pytest.approx(2 * 256 ** 3 / 2e9)
    assert roofline(graph_costs(add), "fp16", prof).seconds == pytest.approx(3 * 2 * (1 << 16) / 1e9)
    assert roofline(graph_costs(mm), "int8", prof).seconds == pytest.approx(2 * 256 ** 3 / 4e9)  # engine quantizes it
    # more bandwidth speeds the Add up until its one op per element binds, and leaves the MatMul as it was
    fast = _profile(memory_bandwidth_bytes_per_s=1e12)
    r = roofline(graph_costs(add), "fp32", fast)
    assert r.bound == "compute" and r.seconds == pytest.approx((1 << 16) / 1e9)
    assert roofline(graph_costs(mm), "fp32", fast).seconds == pytest.approx(2 * 256 ** 3 / 1e9)


def test_missing_figures_say_so():
    mm = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", F, [64, 64])],
                [helper.make_tensor_value_info("y", F, [64, 64])], [_w("w", (64, 64))])
    costs = graph_costs(mm)
    r = roofline(costs, "bf16", _profile())
    assert r.seconds is None and r.reason.startswith("n/a") and "bf16" in r.reason
    r = roofline(costs, "int8", _profile(peak_ops_per_s={"fp32": 1e9, "fp16": None, "bf16": None, "int8": None}))
    assert r.seconds is None and "int8" in r.reason
    r = roofline(costs, "fp32", _profile(memory_bandwidth_bytes_per_s=None))
    assert r.seconds == pytest.approx(2 * 64 ** 3 / 1e9) and "compute roof only" in r.reason
    # a precision the profile runs as another (onnxruntime widening fp16 on CPUs without fp16 kernels)
    widened = _profile(runs_as={"fp16": "fp32"}, runs_as_why={"fp16": "no fp16 kernels"})
    r = roofline(costs, "fp16", widened)
    assert r.seconds == pytest.approx(roofline(costs, "fp32", widened).seconds) and "runs as fp32" in r.reason


def test_measured_ceilings_and_overheads():
    """Kernel-class ceilings (interpolated by MACs), the cache bandwidth and launch costs come in where known."""
    mm = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", F, [100, 100])],
                [helper.make_tensor_value_info("y", F, [100, 100])], [_w("w", (100, 100))])
    costs = graph_costs(mm)
    prof = _profile(kernel_ceilings={"matmul:float:fp32": [[1e4, 1e8], [1e8, 1e9]]}, node_overhead_s=1e-3, run_overhead_s=5e-3)
    assert prof.kernel_ceiling("matmul", "float", "fp32", 1e6) == pytest.approx(0.55e9)  # halfway in log(MACs)
    assert prof.kernel_ceiling("matmul", "float", "fp32", 1e2) == 1e8 and prof.kernel_ceiling("conv", "float", "fp32", 1e6) is None
    r = roofline(costs, "fp32", prof)
    assert r.seconds == pytest.approx(2e6 / 0.55e9 + 1e-3 + 5e-3)
    cached = _profile(cache_bandwidth_bytes_per_s=1e11, cache_bytes=1 << 20)
    assert cached.bandwidth_for(1000) == 1e11 and cached.bandwidth_for(1 << 21) == 1e9


def test_estimate_on_a_bundled_profile(tiny):
    """An int8 estimate of a compute-heavy graph on a CPU profile is faster than its fp32 one, and counts the same
    ops; a profile that publishes nothing gives no number."""
    fp32 = estimate(tiny, "fp32", "hisilicon-kirin-990-5g", shapes=(1, 3, 8, 8))
    int8 = estimate(tiny, "int8", "hisilicon-kirin-990-5g", shapes=(1, 3, 8, 8))
    assert 0 < int8.seconds < fp32.seconds and int8.gops == pytest.approx(fp32.gops) and int8.gbytes < fp32.gbytes
    assert estimate(tiny, "fp32", "unisoc-t7520", shapes=(1, 3, 8, 8)).seconds is None


def test_candidate_precision():
    assert candidate_precision("int8:calibrator=mse", "ort") == ("int8", "")
    assert candidate_precision("mixed", "ort")[0] == "int8"
    assert candidate_precision("bf16", "ort")[0] == "fp32"  # weights widened when the session loads
    assert candidate_precision("bf16", "ncnn") == ("bf16", "")
    assert candidate_precision("low", "mnn")[0] == "fp16"
    assert candidate_precision("w4", "ort")[0] == "fp32"


# ---- the bundled profiles ------------------------------------------------------------------------------------

YAMLS = sorted(_data_dir().glob("*.yaml"))


def test_the_required_devices_are_there():
    names = list_profiles()
    for needle in ("apple-a14", "kirin-990", "helio-p95", "t7520", "r329", "risc"):
        assert any(needle in n for n in names), needle
    assert names[-1] == "host" and len(YAMLS) >= 6


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_every_profile_loads_and_sources_every_value(path):
    data = yaml.safe_load(path.read_text())
    prof = load_profile(path.stem)
    assert prof.name == path.stem and set(prof.peak_ops_per_s) == set(PRECISIONS)
    covered = {v for s in data["sources"] for v in s.get("values", [])}
    values = {"cores": prof.cores, "clock_ghz": prof.clock_ghz, "memory_bandwidth_bytes_per_s": prof.bandwidth,
              **{f"peak_ops_per_s.{p}": v for p, v in prof.peak_ops_per_s.items()}}
    for k, v in values.items():
        if v is not None:
            assert k in covered, f"{path.name}: {k} has no source"
    for s in data["sources"]:
        assert s["url"].startswith("http") and s["gives"].strip()
    for k in data.get("derived") or {}:
        assert values[k] is not None


def test_schema_is_checked():
    good = yaml.safe_load((_data_dir() / "hisilicon-kirin-990-5g.yaml").read_text())
    validate_profile(good, "good")
    cases = [
        ({"peak_ops_per_s": {**good["peak_ops_per_s"], "fp32": 1e9}, "sources": [dict(good["sources"][0], values=["cores"])]},
         "has no source"),
        ({"speed": 3}, "unknown field"),
        ({"peak_ops_per_s": {"fp32": 1e9}}, "exactly"),
        ({"kind": "phone"}, "kind"),
        ({"memory_bandwidth_bytes_per_s": -1}, "positive"),
        ({"sources": []}, "non-empty"),
        ({"derived": {"peak_ops_per_s.bf16": "x"}}, "null"),
    ]
    for patch, needle in cases:
        with pytest.raises(ProfileError, match=needle):
            validate_profile({**good, **patch}, "patched")
    with pytest.raises(ProfileError, match="missing"):
        validate_profile({k: v for k, v in good.items() if k != "sources"}, "patched")
    with pytest.raises(Exception, match="hisilicon-kirin-990-5g"):
        load_profile("kirin")  # close matches are named


# ---- the command ---------------------------------------------------------------------------------------------

def _es(*args):
    return subprocess.run([sys.executable, "-m", "edgeslim", *args], capture_output=True, text=True, timeout=120)


def test_cli_lists_every_profile_and_shows_sources():
    r = _es("profiles")
    assert r.returncode == 0, r.stderr
    for name in list_profiles():
        assert name in r.stdout
    r = _es("profiles", "mediatek-helio-p95")
    assert r.returncode == 0, r.stderr
    assert "notebookcheck" in r.stdout and "derived" in r.stdout and "35.2" in r.stdout
    r = _es("profiles", "mediatek-helio-p95", "--json")
    assert json.loads(r.stdout)["peak_ops_per_s"]["fp32"] == 3.52e10
    r = _es("profiles", "no-such-chip")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no-such-chip" in r.stderr


# ---- the report ----------------------------------------------------------------------------------------------

def test_optimize_report_has_the_estimate_table(tmp_path, tiny):
    from edgeslim.report import ROOFLINE_TITLE, write_report
    from edgeslim.study import StudyConfig, optimize

    data = tmp_path / "in.npz"
    np.savez(data, x=np.random.default_rng(0).normal(0, 1, (8, 3, 8, 8)).astype(np.float32))
    cfg = StudyConfig(model=str(tiny), task="raw", data=str(data), recipes=("fp32", "int8:calibrator=minmax"),
                      engine_precisions=("mnn:fp32",), rounds=1, confirm_top=0, cache=False)
    res = optimize(cfg, tmp_path / "work")
    paths = write_report(res, tmp_path / "work")
    d = json.loads(paths["json"].read_text())
    names = [p["name"] for p in d["profiles"]]
    assert names[0] == "host" and set(list_profiles()) == set(names)
    by_id = {c["id"]: c for c in d["candidates"]}
    int8 = by_id["ort/int8:calibrator=minmax"]["roofline"]
    assert int8["precision"] == "int8" and set(int8["estimates"]) == set(names)
    kirin = {cid: c["roofline"]["estimates"]["hisilicon-kirin-990-5g"]["ms"] for cid, c in by_id.items()}
    assert all(v and v > 0 for v in kirin.values())
    assert by_id["ort/original"]["roofline"]["estimates"]["host"]["ms"] > 0
    assert by_id["ort/original"]["roofline"]["estimates"]["unisoc-t7520"]["ms"] is None
    assert "converted from" in by_id["mnn/fp32"]["roofline"]["graph"]
    md = paths["md"].read_text()
    assert f"## {ROOFLINE_TITLE}" in md and "| candidate | precision | host |" in md and "n/a" in md
    table = md.split(f"## {ROOFLINE_TITLE}")[1]
    for cid in by_id:
        assert f"| {cid} |" in table
    assert ROOFLINE_TITLE in paths["html"].read_text()


def test_report_without_estimates_has_no_table(tmp_path):
    """Results from before this feature (no profiles) render without the section."""
    from edgeslim.report import ROOFLINE_TITLE, markdown
    from edgeslim.study import Candidate, StudyConfig, StudyResult

    res = StudyResult(config=StudyConfig(model="m.onnx"), metric_name="cer", higher_is_better=False, budget=0.005,
                      baseline="ort/original", selected=None, candidates=[Candidate(id="ort/original", recipe="original", engine="ort")],
                      machine={}, bench_input_shape=[1], telemetry={}, data={"calib": 1, "eval": 1, "source": "x"}, seconds=0.0)
    assert ROOFLINE_TITLE not in markdown(res)
    res = dataclasses.replace(res, profiles=[{"name": "toy", "title": "toy", "peak_gops": {}, "bandwidth_gbs": None}])
    assert ROOFLINE_TITLE not in markdown(res)  # no candidate carries estimates
