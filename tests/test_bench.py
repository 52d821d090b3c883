"""Benchmark workers: fresh interpreters (no re-import of the caller), their own peak RSS, rotating order, thread
policies reaching each engine, recorded conditions, and no worker outliving the call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from edgeslim.bench import BenchResult, BenchSpec, bench_one, bench_rounds, noise_reasons
from edgeslim.engines import get_engine
from edgeslim.engines.base import CPU_POLICIES, thread_policy
from edgeslim.errors import EdgeslimError, InvalidParameterError

FEEDS = {"x": np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)}
FAST = {"target_round_s": 0.02, "pause_s": 0.05}


def _ort_specs(path: Path, n: int) -> list[BenchSpec]:
    return [BenchSpec(id=f"c{i}", engine="ort", artifact=str(path)) for i in range(n)]


class _Children:
    """Progress callback that records the live child processes (the workers) after each round."""

    def __init__(self, raise_after: int | None = None) -> None:
        self.pids: set[int] = set()
        self.env: dict[int, dict] = {}
        self.raise_after = raise_after

    def __call__(self, r: int, n: int) -> None:
        for p in psutil.Process().children(recursive=True):
            self.pids.add(p.pid)
            try:
                self.env[p.pid] = p.environ()
            except psutil.Error:
                pass
        if self.raise_after is not None and r >= self.raise_after:
            raise KeyboardInterrupt


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- thread policy ----------------------------------------------------------------------------------------------

def test_thread_policy_values():
    assert CPU_POLICIES == ("dedicated", "shared")
    assert thread_policy("dedicated") == {
        "policy": "dedicated", "OMP_WAIT_POLICY": "ACTIVE",
        "ort_session_config": {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1"},
        "ncnn_openmp_blocktime": 20}
    assert thread_policy("shared") == {
        "policy": "shared", "OMP_WAIT_POLICY": "PASSIVE",
        "ort_session_config": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
        "ncnn_openmp_blocktime": 0}


def test_unknown_policy_is_one_line_naming_the_valid_ones(tiny):
    with pytest.raises(InvalidParameterError) as e:
        thread_policy("idle")
    msg = str(e.value)
    assert isinstance(e.value, (EdgeslimError, ValueError)) and "\n" not in msg
    assert "'idle'" in msg and "dedicated, shared" in msg
    with pytest.raises(InvalidParameterError):
        get_engine("ort").load(tiny, 1, "idle")
    with pytest.raises(InvalidParameterError):  # rejected before any worker starts
        bench_rounds(_ort_specs(tiny, 1), FEEDS, 1, rounds=1, policy="busy")


@pytest.mark.parametrize("policy,flag", [("shared", "0"), ("dedicated", "1")])
def test_ort_runner_applies_spinning_entries(tiny, policy, flag):
    runner = get_engine("ort").load(tiny, 1, policy)
    so = runner.session.get_session_options()
    assert runner.policy == policy
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == flag
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == flag
    assert runner.run(FEEDS)[0].shape == (1, 5)


def test_ncnn_and_mnn_runners_record_policy(tiny, tmp_path):
    import onnx

    model = onnx.load(str(tiny))
    for name in ("ncnn", "mnn"):
        eng = get_engine(name)
        if not eng.available():
            continue
        art = eng.convert(model, tmp_path / f"m{eng.suffix}")
        for policy in CPU_POLICIES:
            runner = eng.load(art, 1, policy)
            assert runner.policy == policy
            if name == "ncnn":  # the attribute exists in recent ncnn; the runner must set it from the policy
                assert runner._net.opt.openmp_blocktime == thread_policy(policy)["ncnn_openmp_blocktime"]
            assert runner.run(FEEDS)[0].shape == (1, 5)


# ---- workers ----------------------------------------------------------------------------------------------------

def test_script_without_main_guard_is_not_reimported(tiny, tmp_path):
    # multiprocessing's spawn re-runs a guard-less __main__ in every worker: the marker would get one line per
    # worker and the nested bench_rounds call would fail in each child.
    marker = tmp_path / "ran.txt"
    script = tmp_path / "user_script.py"
    script.write_text(f"""
import json
import numpy as np
from edgeslim.bench import BenchSpec, bench_rounds
with open({str(marker)!r}, "a") as f:
    f.write("ran\\n")
specs = [BenchSpec(id="a", engine="ort", artifact={str(tiny)!r}), BenchSpec(id="b", engine="ort", artifact={str(tiny)!r})]
res, tel = bench_rounds(specs, {{"x": np.zeros((1, 3, 8, 8), np.float32)}}, 1, rounds=2, target_round_s=0.02)
print(json.dumps([[r.id, r.ok, r.reason, len(r.ratios)] for r in res]))
""")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [["a", True, "", 2], ["b", True, "", 2]]
    assert marker.read_text() == "ran\n"


def test_worker_peak_rss_is_its_own_not_the_callers(tiny):
    big = np.ones(600 * 2**20 // 8)  # 600 MB the caller touches; a worker inheriting ru_maxrss would report it
    parent_mb = psutil.Process().memory_info().rss / 2**20
    assert parent_mb > 600
    res, _ = bench_rounds(_ort_specs(tiny, 1), FEEDS, 1, rounds=1, **FAST)
    del big
    assert res[0].ok, res[0].reason
    assert 5 < res[0].peak_rss_mb < parent_mb / 2


def test_rotating_order_conditions_and_no_worker_left(tiny):
    seen = _Children()
    res, tel = bench_rounds(_ort_specs(tiny, 3), FEEDS, 1, rounds=3, policy="shared", progress=seen, **FAST)
    assert [r.ok for r in res] == [True, True, True], [r.reason for r in res]
    assert tel["orders"] == [["c0", "c1", "c2"], ["c1", "c2", "c0"], ["c2", "c0", "c1"]]
    assert len({tuple(o) for o in tel["orders"]}) == 3
    assert all(len(r.ratios) == 3 and len(r.round_medians_ms) == 3 for r in res)
    assert res[0].ratios == [1.0, 1.0, 1.0]
    assert all(r.policy == "shared" for r in res)
    # conditions recorded
    assert tel["policy"] == "shared" and tel["threads"] == 1
    for k in ("loadavg_before", "loadavg_after"):
        assert isinstance(tel[k], float) and tel[k] >= 0
    assert isinstance(tel["noisy"], bool) and tel["noisy"] == bool(tel["noise_reasons"])
    json.dumps(tel)  # cached and written as JSON by callers
    # the workers were child processes with the policy's environment, and none is left
    # each candidate ran in two processes, one after the other, each for its share of the rounds
    assert [g["rounds"] for g in tel["generations"]] == [[0, 2], [2, 3]]
    first, second = (set(g["pids"].values()) for g in tel["generations"])
    assert len(first) == len(second) == 3 and not first & second and seen.pids == first | second
    assert {e.get("OMP_WAIT_POLICY") for e in seen.env.values()} == {"PASSIVE"}
    assert not [pid for pid in seen.pids if _alive(pid)]


def test_interrupt_kills_every_worker(tiny):
    seen = _Children(raise_after=1)
    with pytest.raises(KeyboardInterrupt):
        bench_rounds(_ort_specs(tiny, 2), FEEDS, 1, rounds=5, progress=seen, **FAST)
    assert len(seen.pids) == 2
    assert not [pid for pid in seen.pids if _alive(pid)]


def test_failing_candidate_fails_alone(tiny, tmp_path):
    specs = [BenchSpec(id="base", engine="ort", artifact=str(tiny)),
             BenchSpec(id="gone", engine="ort", artifact=str(tmp_path / "missing.onnx"))]
    res, tel = bench_rounds(specs, FEEDS, 1, rounds=2, **FAST)
    assert res[0].ok and len(res[0].ratios) == 2
    assert not res[1].ok and res[1].reason.startswith("benchmark worker: ") and "missing.onnx" in res[1].reason
    assert tel["orders"] == [["base"], ["base"]]


def test_bench_one_keeps_working(tiny):
    res, tel = bench_one("ort", str(tiny), FEEDS, 1, rounds=2, policy="dedicated")
    assert res.ok and res.id == "model" and len(res.times_ms) >= 2 * 3 and res.latency()["p50"] > 0
    assert tel["policy"] == "dedicated" and tel["worker_env"]["OMP_WAIT_POLICY"] == "ACTIVE"


def _slow_model(path: Path) -> None:
    """The tiny model's input through four 2048x2048 MatMuls: the same feeds, about a thousand times the work."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1, 192], np.int64), "shape"),
             numpy_helper.from_array(rng.normal(0, 0.05, (192, 2048)).astype(np.float32), "w0")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["h"]), helper.make_node("MatMul", ["h", "w0"], ["m0"])]
    for i in range(1, 5):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.02, (2048, 2048)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"m{i - 1}", f"w{i}"], [f"m{i}"]))
    g = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("m4", TensorProto.FLOAT, [1, 2048])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_slower_model_gets_a_ratio_below_one(tiny, tmp_path):
    slow = tmp_path / "slow.onnx"
    _slow_model(slow)
    res, _ = bench_rounds([BenchSpec(id="base", engine="ort", artifact=str(tiny)),
                           BenchSpec(id="slow", engine="ort", artifact=str(slow))], FEEDS, 1, rounds=3, **FAST)
    assert res[0].ratios == [1.0, 1.0, 1.0]
    assert res[1].ok and len(res[1].ratios) == 3 and max(res[1].ratios) < 0.5 and res[1].speedup() < 0.5


# ---- noise ------------------------------------------------------------------------------------------------------

def test_noise_reasons():
    base = BenchResult("base", ok=True, ratios=[1.0, 1.0, 1.0])
    steady = BenchResult("steady", ok=True, ratios=[1.9, 2.0, 2.1])
    jumpy = BenchResult("jumpy", ok=True, ratios=[1.0, 2.0, 1.5])
    one_outlier = BenchResult("outlier", ok=True, ratios=[2.0, 2.0, 2.05, 1.95, 3.5])  # one bad round of five
    assert noise_reasons([base, steady, one_outlier], 2, (0.4, 2.3), 0.1) == []
    # a load average left over from our own evaluation is recorded, not judged
    assert noise_reasons([base, steady], 2, (2.6, 2.6), 0.1) == []
    reasons = noise_reasons([base, steady, jumpy], 2, (2.6, 0.1), 0.9)
    assert len(reasons) == 2
    assert "0.90 cores" in reasons[0]
    assert reasons[1].startswith("jumpy:")


def test_wait_parked_returns_once_the_previous_worker_stops_using_cpu():
    """The pause before a candidate ends when the previous worker's pool parks, not after a fixed time; a worker that
    keeps a core busy is waited for up to the cap."""
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from edgeslim.bench import _wait_parked

    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    try:
        time.sleep(0.5)  # both interpreters started
        t0 = time.monotonic()
        _wait_parked(SimpleNamespace(proc=idle), 1.0)
        assert time.monotonic() - t0 < 0.5
        t0 = time.monotonic()
        _wait_parked(SimpleNamespace(proc=busy), 0.6)
        assert time.monotonic() - t0 >= 0.55
        t0 = time.monotonic()
        _wait_parked(None, 1.0)  # no previous worker: no wait
        assert time.monotonic() - t0 < 0.1
    finally:
        idle.kill()
        busy.kill()
        idle.wait()
        busy.wait()
