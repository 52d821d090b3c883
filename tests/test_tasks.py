import numpy as np
import pytest

from edgeslim.errors import DataError
from edgeslim.tasks import get_task
from edgeslim.tasks.ocr_rec import cer, ctc_greedy, edit_distance, read_labels


def test_edit_distance_and_cer():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert cer(["abc", "xy"], ["abd", "xyz"]) == pytest.approx(2 / 6)


def test_ctc_greedy_merges_repeats_and_drops_blank():
    charset = ["<blank>", "a", "b"]
    seq = [1, 1, 0, 1, 2, 2, 0, 0, 2]
    probs = np.eye(3)[seq][None]
    assert ctc_greedy(probs, charset) == ["aabb"]


def _write_png(path, h=20, w=60):
    import cv2

    cv2.imwrite(str(path), np.full((h, w, 3), 200, np.uint8))


def test_ocr_data_errors(tmp_path):
    t = get_task("ocr-rec", charset=["<blank>", "a"])
    with pytest.raises(DataError, match="not found"):
        t.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty"):
        t.load(empty)
    d = tmp_path / "d"
    d.mkdir()
    _write_png(d / "a.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n garbage")
    (d / "labels.tsv").write_text("a.png\tabc\nno tab here\n")
    with pytest.raises(DataError, match=r"labels.tsv:2: expected 'filename<TAB>text'"):
        t.load(d)
    (d / "labels.tsv").write_text("a.png\tabc\na.png\tabc\nbad.png\txyz\n")
    with pytest.raises(DataError, match=r"labels.tsv:3: .*bad.png: cannot decode"):
        t.load(d)
    (d / "labels.tsv").write_text("a.png\tabc\nmissing.png\txyz\n")
    with pytest.raises(DataError, match=r"missing.png: image file not found"):
        t.load(d)


def test_ocr_user_data_split_and_batches(tmp_path):
    for i in range(6):
        _write_png(tmp_path / f"{i}.png", w=40 + 30 * i)
    (tmp_path / "labels.tsv").write_text("".join(f"{i}.png\tline {i}\n" for i in range(6)))
    t = get_task("ocr-rec", charset=["<blank>", "a"], calib_size=2)
    calib, ev = t.load(tmp_path)
    assert [s.name for s in calib] == ["0.png", "1.png"] and len(ev) == 4
    seen = []
    for b in t.batches(ev, 3):
        x = b.feeds["x"]
        assert x.shape[1:3] == (3, 48) and x.shape[3] >= 320 and x.shape[3] % 32 == 0
        seen += b.index
    assert sorted(seen) == [0, 1, 2, 3]


def test_bundled_set_split_is_disjoint():
    import json

    from edgeslim.tasks.ocr_rec import BUNDLED

    split = json.loads((BUNDLED / "split.json").read_text())
    assert not set(split["calib"]) & set(split["eval"])
    assert len(split["calib"]) <= 100 and len(split["calib"]) + len(split["eval"]) >= 600
    rows = read_labels(BUNDLED / "labels.tsv")
    assert all(2 <= len(text) <= 25 for _, _, text in rows)


def test_classify_and_raw_errors(tmp_path):
    c = get_task("classify")
    with pytest.raises(DataError, match="no class sub-folders"):
        c.load(tmp_path)
    r = get_task("raw")
    r.input_names = ["x"]
    np.savez(tmp_path / "in.npz", y=np.zeros((4, 3)))
    with pytest.raises(DataError, match="no array named 'x'"):
        r.load(tmp_path / "in.npz")
    np.savez(tmp_path / "in.npz", x=np.zeros((4, 3), np.float32))
    calib, ev = r.load(tmp_path / "in.npz")
    assert len(calib) == 2 and len(ev) == 2 and ev[0]["x"].shape == (1, 3)


def test_classify_loads_folders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", 30, 30)
    t = get_task("classify", size=(16, 16))
    calib, ev = t.load(tmp_path)
    assert len(calib) + len(ev) == 6 and {s.label for s in calib + ev} == {0, 1}
    b = next(iter(t.batches(ev, 8)))
    assert b.feeds["input"].shape == (len(ev), 3, 16, 16)


# ---- raw task: dataset-level agreement over every output ----------------------------------------------------------

class _raw:
    """A raw task whose `score` is bound to a reference (the original's predictions)."""

    def __init__(self, reference=None):
        self.t, self.reference = get_task("raw"), reference

    def score(self, preds, samples):
        return self.t.score(preds, samples, reference=self.reference)

    def __getattr__(self, name):
        return getattr(self.t, name)


def test_raw_all_zero_reference_and_candidate_agree_perfectly():
    from edgeslim.tasks.raw import agreement, max_abs_error

    ref = [[np.zeros((1, 10), np.float32), np.zeros((1, 4), np.float32)] for _ in range(3)]
    cand = [[o.copy() for o in p] for p in ref]
    assert agreement(cand, ref) == 1.0 and max_abs_error(cand, ref) == 0.0
    t = _raw(ref)
    s = t.score(cand, [None] * 3)
    assert s["metric"] == 1.0 and s["max_abs_err"] == 0.0 and s["argmax_agree"] == 1.0
    assert t.fidelity(cand, ref) == {"exact_match": 1.0, "metric_vs_fp32": 0.0}
    assert t.drop(s["metric"], 1.0) == 0.0 and t.extra_problem(s) is None
    # Anything non-zero where fp32 says zero is total disagreement, not a division by zero.
    cand[1][0][0, 3] = 0.5
    assert agreement(cand, ref) == 0.0


def test_raw_one_percent_off_scores_accordingly():
    from edgeslim.tasks.raw import agreement, max_abs_error

    rng = np.random.default_rng(0)
    ref = [[rng.normal(size=(1, 20)).astype(np.float32)] for _ in range(4)]
    ref.append([np.zeros((1, 20), np.float32)])  # an empty image's detector output: no longer undefined
    cand = [[o * np.float32(1.01)] for (o,) in ref]
    # fp32 noise where the reference is exactly zero: a per-sample cosine would score that sample 0.
    cand[-1][0] = rng.normal(0, 1e-9, (1, 20)).astype(np.float32)
    t = _raw(ref)
    s = t.score(cand, [None] * 5)
    assert s["metric"] == pytest.approx(0.99, abs=1e-6)
    assert t.fidelity(cand, ref)["metric_vs_fp32"] == pytest.approx(0.01, abs=1e-6)
    all_ref = np.concatenate([o.ravel() for (o,) in ref])
    assert s["max_abs_err"] == pytest.approx(0.01 * np.abs(all_ref).max() / np.ptp(all_ref), rel=1e-4)
    assert t.drop(s["metric"], 1.0) <= t.default_budget  # 1% error stays within the default budget
    assert max_abs_error(cand, ref) < 0.1 and t.extra_problem(s) is None
    # A candidate that is off by 20%: beyond the budget.
    assert t.drop(agreement([[o * np.float32(1.2)] for (o,) in ref], ref), 1.0) > t.default_budget


def test_raw_metric_covers_every_output_and_gates_small_ones():
    from edgeslim.tasks.raw import agreement, max_abs_error

    rng = np.random.default_rng(1)
    boxes = [rng.uniform(0, 640, (1, 8)).astype(np.float32) for _ in range(3)]
    scores = [rng.uniform(0, 1, (1, 8)).astype(np.float32) for _ in range(3)]
    ref = [[b, s] for b, s in zip(boxes, scores)]
    # The small output (scores) is wrong: L2 over everything barely moves, the max-abs gate catches it.
    cand = [[b.copy(), 1 - s] for b, s in zip(boxes, scores)]
    assert 0.99 < agreement(cand, ref) < 1.0
    e = max_abs_error(cand, ref)
    assert e > 0.5
    t = _raw(ref)
    assert "max abs error" in t.extra_problem(t.score(cand, [None] * 3))
    # Second output only off -> first-output-only metrics would have called this perfect.
    assert t.fidelity(cand, ref)["metric_vs_fp32"] > 0
    nan = [[b, np.full_like(s, np.nan)] for b, s in zip(boxes, scores)]
    assert agreement(nan, ref) == 0.0 and max_abs_error(nan, ref) == float("inf")


def test_raw_decode_keeps_every_output_and_baseline_scores_one(tmp_path):
    t = get_task("raw")
    outs = [np.ones((1, 3)), np.zeros((1, 2))]
    (pred,) = t.decode(outs)
    assert len(pred) == 2 and pred[1].shape == (1, 2)
    s = t.score([pred], [None])
    assert s["metric"] == 1.0 and t.metric_name == "agreement_l2" and t.higher_is_better


# ---- baseline sanity --------------------------------------------------------------------------------------------

def test_baseline_problem_flags_chance_level_and_unreadable(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", 30, 30)
    c = get_task("classify", size=(16, 16))
    assert c.baseline_problem(0.0, 3) is None  # class count unknown before load
    c.load(tmp_path)
    msg = c.baseline_problem(0.0, 3)
    assert "baseline top-1 0.000" in msg and "chance (0.500 for 2 classes)" in msg and "class folder order" in msg
    assert c.baseline_problem(0.5, 3) is not None and c.baseline_problem(0.67, 3) is None
    o = get_task("ocr-rec", charset=["<blank>", "a"])
    assert "dictionary" in o.baseline_problem(0.95, 10) and o.baseline_problem(0.2, 10) is None
    assert get_task("raw").baseline_problem(0.0, 10) is None


def test_ocr_eval_limit_still_checks_every_listed_image(tmp_path):
    for i in range(4):
        _write_png(tmp_path / f"{i}.png")
    (tmp_path / "9.png").write_bytes(b"\x89PNG\r\n garbage")
    (tmp_path / "labels.tsv").write_text("".join(f"{i}.png\tline\n" for i in range(4)) + "9.png\tbroken\n")
    t = get_task("ocr-rec", charset=["<blank>", "a"], calib_size=1, eval_limit=2)
    with pytest.raises(DataError, match=r"labels.tsv:5: .*9.png: cannot decode"):
        t.load(tmp_path)
    (tmp_path / "labels.tsv").write_text("".join(f"{i}.png\tline\n" for i in range(4)))
    calib, ev = t.load(tmp_path)
    assert len(calib) == 1 and len(ev) == 2


# ---- deploy specs: a task rebuilt from its spec feeds and decodes the same ----------------------------------------

def test_ocr_deploy_spec_round_trip(tmp_path):
    charset = ["<blank>", "a", "b", " ", "\u3000"]
    t = get_task("ocr-rec", charset=charset, max_width=800)
    t.input_name = "img"
    spec = t.deploy_spec()
    assert spec["preprocess"]["resize"]["height"] == 48 and spec["preprocess"]["pad"]["min_width"] == 320
    assert spec["preprocess"]["channel_order"] == "BGR" and spec["postprocess"]["type"] == "ctc_greedy"
    import json

    from edgeslim.tasks import TASKS

    back = TASKS.get("ocr-rec").from_deploy_spec(json.loads(json.dumps(spec)))
    assert back.charset == charset and back.max_width == 800 and back.input_name == "img"
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (20 + 7 * i, 30 + 41 * i, 3), dtype=np.uint8) for i in range(4)]
    for a, b in zip(t.batches(t.samples_from(imgs)), back.batches(back.samples_from(imgs))):
        assert a.index == b.index and np.array_equal(a.feeds["img"], b.feeds["img"])
    gray = back.samples_from(imgs[0][:, :, 0])[0].image
    assert gray.shape == imgs[0].shape
    with pytest.raises(DataError, match="BGR uint8"):
        back.samples_from(np.zeros((4, 4, 3), np.float32))


def test_classify_deploy_spec_round_trip_and_topk(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", 30, 30)
    t = get_task("classify", size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    t.load(tmp_path)
    import json

    from edgeslim.tasks import TASKS

    spec = json.loads(json.dumps(t.deploy_spec()))
    assert spec["preprocess"]["channel_order"] == "RGB" and spec["postprocess"]["classes"] == ["cat", "dog"]
    back = TASKS.get("classify").from_deploy_spec(spec)
    paths = [str(tmp_path / "cat" / "0.png"), str(tmp_path / "dog" / "1.png")]
    fa = next(iter(t.batches(t.samples_from(paths)))).feeds["input"]
    assert np.array_equal(fa, next(iter(back.batches(back.samples_from(paths)))).feeds["input"])

    class Fake:
        output_names = ["y"]

        def run(self, feeds):
            n = len(feeds["input"])
            return [np.tile(np.array([0.1, 0.7, 0.7, 0.05, 0.2, 0.3, 0.0], np.float32), (n, 1))]

    preds = back.predict(Fake(), paths)
    assert preds[0] == [(1, pytest.approx(0.7)), (2, pytest.approx(0.7)), (5, pytest.approx(0.3)),
                        (4, pytest.approx(0.2)), (0, pytest.approx(0.1))]
    assert [p[0][0] for p in preds] == back.decode(Fake().run({"input": fa}))


def test_raw_deploy_spec_round_trip(tmp_path):
    from edgeslim.tasks import TASKS

    t = get_task("raw")
    t.input_names = ["a", "b"]
    back = TASKS.get("raw").from_deploy_spec(t.deploy_spec())
    assert back.input_names == ["a", "b"] and t.deploy_spec()["preprocess"] is None
    with pytest.raises(DataError, match="no array named 'b'"):
        back.samples_from({"a": np.zeros(2)})


def test_metric_traps_are_errors():
    """A charset shorter than the model's classes, or predictions and references of different lengths, used to be
    scored silently (dropped indices read as a better CER; zip scored a prefix)."""
    from edgeslim.errors import DataError
    from edgeslim.tasks.ocr_rec import cer, ctc_greedy

    probs = np.zeros((1, 4, 5), np.float32)
    probs[0, :, 4] = 1.0  # class 4 everywhere
    with pytest.raises(DataError, match="5 classes but the charset has 3"):
        ctc_greedy(probs, ["<blank>", "a", "b"])
    assert ctc_greedy(probs, ["<blank>", "a", "b", "c", "d"]) == ["d"]
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        cer(["a", "b"], ["a", "b", "c"])


def test_ocr_rec_bench_batch_times_the_pipelines_batch_at_the_median_width():
    from edgeslim.errors import InvalidParameterError
    from edgeslim.tasks.ocr_rec import Line

    widths = [100, 500, 700, 900, 2000]  # at height 48: 320 (minimum), 512, 704, 896, 1600 (maximum) padded
    lines = [Line(f"l{i}", np.full((48, w, 3), 128, np.uint8), "a") for i, w in enumerate(widths)]
    one = get_task("ocr-rec", charset=["<blank>", "a"]).bench_feeds(lines)["x"]
    assert one.shape == (1, 3, 48, 320)
    batch = get_task("ocr-rec", charset=["<blank>", "a"], bench_batch=8).bench_feeds(lines)["x"]
    assert batch.shape == (8, 3, 48, 704) and np.array_equal(batch[0], batch[7])
    with pytest.raises(InvalidParameterError, match="at least 1"):
        get_task("ocr-rec", bench_batch=0)


def test_study_task_options_reach_the_task_and_bad_ones_fail_in_validate(tmp_path, default_model_path):
    from edgeslim.errors import InvalidParameterError
    from edgeslim.study import StudyConfig, prepare

    prep = prepare(StudyConfig(model=str(default_model_path), task="ocr-rec", eval_limit=4, calib_limit=2,
                               task_options=(("bench_batch", 4),)), tmp_path)
    assert prep.task.bench_batch == 4 and prep.task.bench_feeds(prep.eval)["x"].shape[0] == 4
    assert ["bench_batch", 4] in [list(x) for x in prep.common["task_options"]]
    with pytest.raises(InvalidParameterError, match="no_such_option"):
        StudyConfig(model="m.onnx", task="ocr-rec", task_options=(("no_such_option", 1),)).validate()
