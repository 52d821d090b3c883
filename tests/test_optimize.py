"""optimize end to end on the default model with a small subset: the contract of results.json and the report."""

import json

import pytest

from edgeslim.report import write_report
from edgeslim.study import StudyConfig, _judge, Candidate, optimize
from edgeslim.tasks import get_task

SCHEMA_KEYS = {"schema", "model", "task", "threads", "metric", "baseline", "selected", "candidates", "machine", "bench_input_shape"}
CAND_KEYS = {"id", "recipe", "engine", "status", "reason", "metric", "fidelity", "latency_ms", "speedup", "size_bytes", "artifact"}


@pytest.fixture(scope="module")
def study(tmp_path_factory, default_model_path):
    work = tmp_path_factory.mktemp("study")
    cfg = StudyConfig(model=str(default_model_path), model_label="ppocrv4-rec", recipes=("fp32", "bf16", "int8:calibrator=percentile", "w8"),
                      engine_precisions=("mnn:int8",), eval_limit=48, calib_limit=16, rounds=2, threads=2)
    res = optimize(cfg, work)
    paths = write_report(res, work)
    return res, work, paths


def test_results_json_contract(study):
    res, work, paths = study
    d = json.loads(paths["json"].read_text())
    assert SCHEMA_KEYS <= set(d)
    assert d["metric"]["name"] == "cer" and d["metric"]["higher_is_better"] is False and d["metric"]["budget"] == 0.005
    assert d["baseline"] == "ort/original" and d["bench_input_shape"] == [1, 3, 48, 320]
    ids = [c["id"] for c in d["candidates"]]
    assert ids[0] == "ort/original" and len(ids) == 6 and "mnn/int8" in ids
    assert {c["engine"] for c in d["candidates"]} == {"ort", "mnn"}
    for c in d["candidates"]:
        assert CAND_KEYS <= set(c)
        assert c["status"] in ("ok", "rejected", "failed")
        if c["status"] != "ok":
            assert c["reason"]
        if c["status"] != "failed":
            assert (work / c["artifact"]).exists() and c["latency_ms"]["p50"] > 0 and c["speedup"] > 0
            assert {"exact_match", "metric_vs_fp32"} <= set(c["fidelity"])
    assert d["selected"] in ids


def test_selection_respects_budget(study):
    res, _, _ = study
    base = res.candidates[0]
    assert base.fidelity["exact_match"] == 1.0 and base.fidelity["metric_vs_fp32"] == 0.0
    fp32 = next(c for c in res.candidates if c.recipe == "fp32")
    assert fp32.fidelity["exact_match"] == 1.0  # exact rewrites decode identically
    sel = next(c for c in res.candidates if c.id == res.selected)
    assert sel.status == "ok" and sel.metric <= base.metric + res.budget
    for c in res.candidates:
        if c.status == "ok":
            assert c.metric <= base.metric + res.budget
    int8 = next(c for c in res.candidates if c.recipe.startswith("int8"))
    assert int8.size_bytes < 0.35 * base.size_bytes
    w8 = next(c for c in res.candidates if c.recipe == "w8")
    assert w8.size_bytes < 0.35 * base.size_bytes


def test_report_files(study):
    res, work, paths = study
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and res.selected in html
    md = paths["md"].read_text()
    assert "| candidate |" in md and res.selected in md


def test_collapse_is_rejected_never_selected():
    task = get_task("ocr-rec", charset=["<blank>", "a"])
    c = Candidate(id="ort/x", recipe="x", engine="ort", metric=0.91, fidelity={"exact_match": 0.02, "metric_vs_fp32": 0.9})
    _judge(task, c, 0.02, 0.005)
    assert c.status == "rejected" and c.reason.startswith("collapsed")
    c = Candidate(id="ort/y", recipe="y", engine="ort", metric=0.0201, fidelity={"exact_match": 0.99}, nonfinite=3)
    _judge(task, c, 0.02, 0.005)
    assert c.status == "rejected" and "NaN/Inf" in c.reason
    c = Candidate(id="ort/z", recipe="z", engine="ort", metric=0.0249, fidelity={"exact_match": 0.9})
    _judge(task, c, 0.02, 0.005)
    assert c.status == "ok"


def test_confirm_takes_the_top_k_and_whatever_the_screen_cannot_tell_from_the_kth():
    from edgeslim.study import confirm_candidates

    def cand(cid, speedup, lo, hi):
        return Candidate(id=cid, recipe=cid, engine="ort", speedup=speedup, speedup_range=[lo, hi])

    a, b, c = cand("a", 1.75, 1.67, 1.86), cand("b", 1.70, 1.64, 1.80), cand("c", 1.70, 1.64, 1.81)
    close, slow = cand("close", 1.67, 1.63, 2.8), cand("slow", 1.01, 0.99, 1.4)
    got = confirm_candidates([slow, close, c, b, a], 3)
    assert got[0].id == "a" and {x.id for x in got[1:3]} == {"b", "c"}  # the three fastest first (b, c tie)
    assert {x.id for x in got[3:]} == {"close"}  # 1.67 lies inside the third's range [1.64, 1.81]; 1.01 does not
    assert [x.id for x in confirm_candidates([slow, a], 1)] == ["a"]
    assert confirm_candidates([a, b], 0) == []
