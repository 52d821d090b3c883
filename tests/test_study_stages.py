"""Each stage of `edgeslim.study.optimize` called alone, on a tiny model with raw data: its inputs, its outputs and
what it must not do (a failing build stops nothing; the cache replays; the confirm set; the other policy's choice)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.candidate import Candidate, Status
from edgeslim.errors import InvalidParameterError
from edgeslim.policy import ThreadPolicy
from edgeslim.study import (Measurements, StudyConfig, build, choose, confirm, deliver, estimate, evaluate_baseline,
                            evaluate_candidates, prepare, screen)

from conftest import tiny_conv_model


@pytest.fixture
def raw(tmp_path):
    model = tmp_path / "tiny.onnx"
    tiny_conv_model(model)
    data = tmp_path / "in.npz"
    np.savez(data, x=np.random.default_rng(0).normal(0, 1, (12, 3, 8, 8)).astype(np.float32))
    return model, data


def _config(raw, tmp_path, **kw) -> StudyConfig:
    model, data = raw
    base = dict(model=str(model), task="raw", data=str(data), recipes=("fp32", "w8"), engines=("ort",), rounds=2,
                confirm_top=1, cache_dir=str(tmp_path / "cache"))
    return StudyConfig(**{**base, **kw})


def test_prepare_plans_and_loads_without_building(raw, tmp_path):
    prep = prepare(_config(raw, tmp_path), tmp_path / "w")
    assert [p.candidate.id for p in prep.plan] == ["ort/fp32", "ort/w8"]
    assert prep.calib and prep.eval and prep.budget == prep.task.default_budget
    assert (tmp_path / "w" / "candidates").is_dir() and not any((tmp_path / "w" / "candidates").iterdir())
    assert prep.config.cpu is ThreadPolicy.DEDICATED and prep.data_hash is not None


def test_prepare_refuses_bad_values_before_any_work(raw, tmp_path):
    for kw, flag in (({"threads": 0}, "--threads"), ({"cpu": "busy"}, "--cpu"), ({"objective": "speed"}, "--objective"),
                     ({"max_drop": -1.0}, "--max-drop"), ({"max_drop": float("nan")}, "--max-drop")):
        with pytest.raises(InvalidParameterError, match=flag):
            prepare(_config(raw, tmp_path, **kw), tmp_path / "w")
        assert not (tmp_path / "w").exists()


def test_baseline_build_and_evaluate_alone(raw, tmp_path):
    prep = prepare(_config(raw, tmp_path), tmp_path / "w")
    base = evaluate_baseline(prep)
    assert base.candidate.id == "ort/original" and base.candidate.status == Status.OK
    assert base.candidate.fidelity["exact_match"] == 1.0 and len(base.preds) == len(prep.eval)
    cands = build(prep, base)
    assert all(c.artifact and (prep.workdir / c.artifact).is_file() and c.metric is None for c in cands)
    evaluate_candidates(prep, base, cands)
    fp32 = cands[0]
    assert fp32.metric is not None and fp32.fidelity["exact_match"] == 1.0 and fp32.status == Status.OK
    # the cache: a second prepare + build replays every evaluated candidate without building it
    prep2 = prepare(_config(raw, tmp_path), tmp_path / "w2")
    again = build(prep2, evaluate_baseline(prep2))
    assert all(c.cached and c.metric == o.metric for c, o in zip(again, cands))


def test_a_failing_build_fails_its_candidate_only(raw, tmp_path, monkeypatch):
    prep = prepare(_config(raw, tmp_path, cache=False), tmp_path / "w")
    base = evaluate_baseline(prep)
    w8 = prep.plan[1].recipe

    def boom(ctx):
        raise RuntimeError("converter exploded\nsecond line")

    monkeypatch.setattr(w8, "apply", boom)
    cands = build(prep, base)
    assert cands[1].status == Status.FAILED and cands[1].reason == "RuntimeError: converter exploded"
    evaluate_candidates(prep, base, cands)
    assert cands[0].status == Status.OK and cands[1].status == Status.FAILED


def test_screen_confirm_choose_estimate_deliver(raw, tmp_path):
    prep = prepare(_config(raw, tmp_path, cache=False), tmp_path / "w")
    base = evaluate_baseline(prep)
    cands = [base.candidate] + build(prep, base)
    evaluate_candidates(prep, base, cands[1:])
    m = Measurements.start(prep, cands)
    screen(prep, cands, m)
    assert all(len(c.ratios) == 2 and c.speedup is not None for c in cands)
    assert cands[0].speedup == 1.0  # the baseline's ratio to itself, every round
    chosen = confirm(prep, cands, m)
    assert chosen[0] is cands[0] and set(m.phases) == {"screen", "confirm", "other_policy"}
    assert all(c.info.get("confirmed") for c in chosen)
    assert all("speedup_shared" in c.info for c in chosen)  # the other policy, measured beside
    selected, selection = choose(prep, cands)
    assert selected is not None and selected.id in [c.id for c in chosen]
    assert "if_shared" in selection and selection["why"]
    profiles = estimate(prep, cands, m)
    assert profiles and all("estimates" in c.roofline or "error" in c.roofline for c in cands)
    res = deliver(prep, cands, m, selected, selection, profiles, 0.0, ["test"])
    d = res.to_dict()
    assert d["selected"] == selected.id and d["config"]["cpu"] == "dedicated" and d["objective"] == "latency"
    assert [c["status"] for c in d["candidates"]] == [str(c.status) for c in cands]
    assert d["bench"]["confirm"] == [c.id for c in chosen] and d["command"] == ["test"]


def test_choose_never_picks_a_candidate_slower_than_the_original(raw, tmp_path):
    prep = prepare(_config(raw, tmp_path, cache=False), tmp_path / "w")
    base = Candidate(id="ort/original", recipe="original", engine="ort", speedup=1.0, ratios=[1.0] * 5)
    slow = Candidate(id="ort/fp32", recipe="fp32", engine="ort", speedup=0.8, ratios=[0.8] * 5,
                     fidelity={"exact_match": 1.0}, info={"confirmed": True})
    base.info["confirmed"] = True
    picked, why = choose(prep, [base, slow])
    assert picked is base and "original is kept" in why["why"]


def _fake_devices(monkeypatch, corrupt: bool):
    """A device that runs outputs through the real device worker on this machine, optionally zeroing them (an engine
    whose ARM kernels go wrong), and says it never measures speed, as qemu-aarch64 does."""
    import edgeslim.devices as devices
    from edgeslim.devices.local import LocalDevice

    class Fake(LocalDevice):
        kind = "fake"
        measures_speed = False

        def __init__(self, spec):
            super().__init__()
            self.spec = spec

        def describe(self):
            return {"name": self.spec, "arch": "aarch64", "cpu": "Test-A55"}

        def run_outputs(self, folder, feeds_list, **kw):
            outs = super().run_outputs(folder, feeds_list, **kw)
            return [[np.zeros_like(o) for o in out] for out in outs] if corrupt else outs

    real = devices.parse_device
    monkeypatch.setattr(devices, "parse_device", lambda s, **kw: Fake("fake:a55") if str(s).startswith("fake") else real(s, **kw))


@pytest.mark.parametrize("corrupt", [False, True])
def test_verify_rejects_what_diverges_on_the_device_and_selects_again(raw, tmp_path, monkeypatch, corrupt):
    from edgeslim.study import verify

    _fake_devices(monkeypatch, corrupt)
    prep = prepare(_config(raw, tmp_path, cache=False, verify_on=("fake:a55",), verify_limit=4), tmp_path / "w")
    base = evaluate_baseline(prep)
    cands = [base.candidate] + build(prep, base)
    evaluate_candidates(prep, base, cands[1:])
    m = Measurements.start(prep, cands)
    screen(prep, cands, m)
    first, selection = choose(prep, cands)
    picked, selection = verify(prep, cands, first, selection)
    rec = first.info["verified_on"][0]
    assert rec["device"] == "fake:a55" and rec["arch"] == "aarch64" and rec["samples"] == 4
    if not corrupt:
        assert picked is first and rec["ok"] and rec["same_as_host"] == 1.0
    else:  # every candidate diverges there: each is rejected in turn, the original included
        assert not rec["ok"] and "diverge" in rec["reason"] and first.status == Status.REJECTED
        assert first.reason.startswith("on fake:a55: ")
        assert picked is None and cands[0].status == Status.REJECTED
        for c in cands:  # verified means rejected; what is left passing was never a choice: slower than the original
            if c.info.get("verified_on"):
                assert c.status == Status.REJECTED and c.reason.startswith("on fake:a55: "), c.id
            elif c.status == Status.OK and c.ratios:
                assert (c.speedup or 0) < 1.0, c.id
    assert selection["verified_on"] == ["fake:a55"]


def test_a_device_that_cannot_time_is_refused_as_device(raw, tmp_path, monkeypatch):
    _fake_devices(monkeypatch, False)
    with pytest.raises(InvalidParameterError, match="never taken from emulation"):
        prepare(_config(raw, tmp_path, device="fake:a55"), tmp_path / "w")


def test_a_candidate_collapsed_on_the_probe_is_not_run_further(raw, tmp_path, monkeypatch):
    """The probe: a candidate whose outputs went wrong (here negated, as a broken kernel would) is judged on the leading
    share of the evaluation samples and the rest never run; a sound candidate runs every sample."""
    import edgeslim.study as study

    model, _ = raw
    data = tmp_path / "many.npz"
    np.savez(data, x=np.random.default_rng(1).normal(0, 1, (160, 3, 8, 8)).astype(np.float32))
    prep = prepare(_config((model, data), tmp_path, cache=False), tmp_path / "w")
    base = evaluate_baseline(prep)
    cands = build(prep, base)
    n_eval = len(prep.eval)
    k = max(study.PROBE_MIN, n_eval // study.PROBE_SHARE)
    assert k < n_eval
    runs: dict[str, int] = {}
    real = prep.run_eval

    def run_eval(engine, path, samples, stage, **kw):
        preds, nf = real(engine, path, samples, stage, **kw)
        runs[stage] = runs.get(stage, 0) + len(samples)
        if "w8" in stage:
            preds = [[-o for o in p] for p in preds]
        return preds, nf

    monkeypatch.setattr(prep, "run_eval", run_eval)
    evaluate_candidates(prep, base, cands)
    fp32, w8 = cands
    assert runs == {"evaluate ort/fp32": n_eval, "evaluate ort/w8": k}
    assert fp32.status == Status.OK and "evaluated_samples" not in fp32.info
    assert w8.status == Status.REJECTED and w8.info["evaluated_samples"] == k
    assert w8.reason.startswith("collapsed") and f"first {k} of {n_eval}" in w8.reason
    # a collapsed candidate is not timed either: the screen runs the original and the sound candidate only
    base_c = base.candidate
    m = Measurements.start(prep, [base_c] + cands)
    screen(prep, [base_c] + cands, m)
    assert [r.id for r in m.phases["screen"]] == [base_c.id, fp32.id]
    assert fp32.speedup is not None and w8.speedup is None and "collapsed" in w8.info["not_timed"]
