"""Whole-image OCR: DB post-processing, quad geometry, parity with RapidOCR, the ocr-det/ocr-cls tasks, a pipeline
folder, and the `edgeslim ocr` command's handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeslim.tasks._ocr_db import DBConfig, db_boxes, unclip
from edgeslim.tasks._ocr_geometry import crop_quad, order_quad, quad_iou, reading_order
from edgeslim.tasks.ocr_det import BUNDLED_PHOTOS, detection_scores, load_photo_set, match_quads

PHOTOS = BUNDLED_PHOTOS / "images"


def edgeslim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeslim", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def zoo_pipeline():
    from edgeslim.apps.ocr.pipeline import OcrPipeline

    return OcrPipeline.load()


# ---- DB post-processing on synthetic maps ----------------------------------------------------------------------

def _grow(w: float, h: float, ratio: float = 1.6) -> float:
    return w * h * ratio / (2 * (w + h))


def test_db_axis_aligned_box_is_grown_by_the_unclip_distance():
    m = np.zeros((100, 200), np.float32)
    m[30:50, 40:160] = 0.9
    boxes, scores = db_boxes(m, (100, 200))
    # the score is the map's mean inside the box found on the dilated bitmap (one pixel wider and taller)
    assert boxes.shape == (1, 4, 2) and scores[0] == pytest.approx(0.9 * 120 * 20 / (121 * 21), abs=0.01)
    # region after the 2x2 dilation: x 40..160, y 30..50 (the contour of pixels 40..160 inclusive)
    d = _grow(120, 20)
    x0, y0 = boxes[0][:, 0].min(), boxes[0][:, 1].min()
    x1, y1 = boxes[0][:, 0].max(), boxes[0][:, 1].max()
    assert abs(x0 - (40 - d)) <= 2 and abs(y0 - (30 - d)) <= 2
    assert abs(x1 - (160 + d)) <= 2 and abs(y1 - (50 + d)) <= 2
    # corner order: top-left, top-right, bottom-right, bottom-left
    q = boxes[0]
    assert q[0][0] < q[1][0] and q[0][1] < q[3][1] and q[2][0] > q[3][0]


def test_db_rotated_box_keeps_angle_and_centre():
    m = np.zeros((200, 300), np.float32)
    rect = ((150.0, 100.0), (160.0, 24.0), 30.0)
    cv2.fillPoly(m, [cv2.boxPoints(rect).astype(np.int32)], 0.8)
    boxes, _ = db_boxes(m, (200, 300))
    assert len(boxes) == 1
    (cx, cy), (w, h), ang = cv2.minAreaRect(boxes[0].astype(np.float32))
    assert abs(cx - 150) < 2 and abs(cy - 100) < 2
    long_side, short_side = max(w, h), min(w, h)
    d = _grow(160, 24)
    # the drawn region is jagged and dilated, so the first box is a few pixels larger than 160x24; without the
    # unclip the box would be about 160 long
    assert abs(long_side - (160 + 2 * d)) < 10 and abs(short_side - (24 + 2 * d)) < 10
    top = order_quad(boxes[0])
    angle = np.degrees(np.arctan2(top[1][1] - top[0][1], top[1][0] - top[0][0]))
    assert abs(abs(angle) - 30) < 2


def test_db_drops_weak_and_tiny_regions_and_scales_to_the_image():
    m = np.zeros((100, 100), np.float32)
    m[10:20, 10:60] = 0.4  # above thresh 0.3, mean below box_thresh 0.5
    m[70:72, 70:72] = 0.99  # 2x2 px: short side below min_size
    m[40:52, 20:80] = 0.95
    boxes, scores = db_boxes(m, (100, 100))
    assert len(boxes) == 1 and abs(boxes[0][:, 1].min() - (40 - _grow(61, 13))) <= 1.5
    big, _ = db_boxes(m, (200, 300))  # the map covers a 300x200 image: x scales 3x, y 2x
    assert np.allclose(big[0][:, 0], np.round(boxes[0][:, 0] * 3), atol=3)
    assert np.allclose(big[0][:, 1], np.round(boxes[0][:, 1] * 2), atol=3)
    low, _ = db_boxes(m, (100, 100), DBConfig(box_thresh=0.3))  # the weak region counts at a lower box threshold
    assert len(low) == 2


def test_unclip_distance_is_area_ratio_over_perimeter():
    sq = np.array([[0, 0], [100, 0], [100, 100], [0, 100]], np.float32)
    grown = unclip(sq, 2.0)  # D = 10000 * 2 / 400 = 50
    assert grown[:, 0].min() == pytest.approx(-50, abs=1) and grown[:, 0].max() == pytest.approx(150, abs=1)


# ---- geometry -----------------------------------------------------------------------------------------------------

def test_order_quad_any_input_order():
    q = np.array([[10, 0], [110, 20], [104, 50], [4, 30]], np.float32)
    for perm in ([0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]):
        assert np.array_equal(order_quad(q[perm]), q)


def test_crop_quad_rectifies_a_tilted_patch():
    img = np.zeros((200, 300, 3), np.uint8)
    rect = ((150.0, 100.0), (120.0, 30.0), 20.0)
    quad = order_quad(cv2.boxPoints(rect))
    cv2.fillPoly(img, [quad.astype(np.int32)], (255, 255, 255))
    cv2.line(img, tuple(quad[3].astype(int)), tuple(quad[2].astype(int)), (0, 0, 255), 3)  # a red bottom edge
    crop = crop_quad(img, quad)
    assert abs(crop.shape[1] - 120) <= 2 and abs(crop.shape[0] - 30) <= 2
    assert crop[8:-8, 8:-8].mean() > 240  # inside: all white
    assert crop[-2:, 10:-10, 2].mean() > 150 and crop[-2:, 10:-10, 0].mean() < 150  # the red edge is at the bottom


def test_crop_quad_turns_vertical_lines():
    img = np.zeros((200, 100, 3), np.uint8)
    img[20:180, 40:60] = 255
    crop = crop_quad(img, np.array([[40, 20], [60, 20], [60, 180], [40, 180]], np.float32))
    assert crop.shape[:2] == (20, 160)


def test_reading_order_rows_then_left_to_right():
    def box(x, y):
        return np.array([[x, y], [x + 10, y], [x + 10, y + 8], [x, y + 8]], np.float32)

    quads = [box(100, 52), box(0, 0), box(50, 4), box(0, 50)]
    assert reading_order(quads) == [1, 2, 3, 0]


def test_quad_iou():
    a = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    assert quad_iou(a, a) == pytest.approx(1.0)
    assert quad_iou(a, a + 20) == 0.0
    assert quad_iou(a, a + [5, 0]) == pytest.approx(50 / 150)
    # nearly coincident edges (a float round trip of the same box) are still the same box
    assert quad_iou(a, a * np.float32(1.0000001)) == pytest.approx(1.0, abs=1e-5)


def test_match_quads_with_do_not_care():
    a = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    gts = [a, a + 50, a + 100]
    ignore = [False, False, True]
    dets = [a + 1, a + 100, a + 200]  # one hit, one on a do-not-care label, one false alarm
    m, nd, ng = match_quads(dets, gts, ignore)
    assert (m, nd, ng) == (1, 2, 2)
    s = detection_scores([(m, nd, ng)])
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["hmean"] == 0.5


# ---- the pipeline ------------------------------------------------------------------------------------------------

def test_parity_with_rapidocr_on_two_generated_photos(zoo_pipeline):
    """Same models, RapidOCR's detector policy (shorter side 736): same lines, same text, boxes within 2 px."""
    from dataclasses import replace

    from rapidocr_onnxruntime import RapidOCR

    from edgeslim.apps.ocr.pipeline import DetResize, OcrPipeline

    ours = OcrPipeline(zoo_pipeline.models, replace(zoo_pipeline.config, det_resize=DetResize(limit=736, mode="min")))
    rapid = RapidOCR(intra_op_num_threads=2, inter_op_num_threads=1)
    for name in ("photo_000.jpg", "photo_001.jpg"):
        ref, _ = rapid(str(PHOTOS / name))
        got = ours.read(PHOTOS / name).lines
        assert ref and len(got) == len(ref) >= 3, (name, [r[1] for r in ref], [l.text for l in got])
        for (box, text, score), line in zip(ref, got):
            assert line.text == text
            assert np.abs(np.asarray(box, np.float32) - np.asarray(line.quad, np.float32)).max() <= 2
            assert line.score == pytest.approx(score, abs=0.02)


def test_default_policy_reads_the_labelled_text(zoo_pipeline):
    from edgeslim.apps.ocr.optimize import text_metrics

    _, ev = load_photo_set(None)
    ev = ev[:3]
    preds = [[(np.asarray(l.quad, np.float32), l.text) for l in zoo_pipeline.read_array(p.image, p.name).lines] for p in ev]
    m = text_metrics(preds, ev)
    assert m["hmean"] > 0.8 and m["cer"] < 0.15, m
    # the metric can fail: dropping the text of every line is a CER of 1
    assert text_metrics([[(q, "") for q, _ in p] for p in preds], ev)["cer"] > 0.95


def test_photo_without_text_gives_no_lines(zoo_pipeline):
    y, x = np.mgrid[0:360, 0:480]
    img = np.dstack([(x / 2) % 256, (y / 2) % 256, np.full_like(x, 128)]).astype(np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 3)
    res = zoo_pipeline.read_array(img)
    assert res.lines == [] and res.width == 480 and res.height == 360


def test_upside_down_photo_is_read_upright(zoo_pipeline):
    img = cv2.imread(str(PHOTOS / "photo_000.jpg"))
    upright = {l.text for l in zoo_pipeline.read_array(img).lines}
    flipped = zoo_pipeline.read_array(cv2.rotate(img, cv2.ROTATE_180)).lines
    assert sum(l.rotated_180 for l in flipped) >= len(flipped) // 2
    assert len(upright & {l.text for l in flipped}) >= len(upright) // 2


def test_pipeline_folder_reads_as_the_zoo(tmp_path, zoo_pipeline):
    """A pipeline folder of three deployment folders (here: the zoo models exported fp32) loads and reads the same."""
    import onnx

    from edgeslim import deploy
    from edgeslim.apps.ocr.pipeline import PIPELINE_FILE, OcrPipeline
    from edgeslim.tasks import get_task
    from edgeslim.zoo import resolve

    stages = {"det": ("ppocrv4-det", "ocr-det"), "cls": ("ppocr-cls", "ocr-cls"), "rec": ("ppocrv4-rec", "ocr-rec")}
    for stage, (zoo_name, task) in stages.items():
        p = resolve(zoo_name)
        t = get_task(task).bind(onnx.load(str(p), load_external_data=False))
        deploy.export(tmp_path / stage, p, "ort", "fp32", t, 2, "dedicated")
    (tmp_path / PIPELINE_FILE).write_text(json.dumps({"schema": 1, "stages": {s: {"folder": s} for s in stages},
                                                      "config": {"det_resize": "max:960"}}))
    pipe = OcrPipeline.load(tmp_path)
    img = cv2.imread(str(PHOTOS / "photo_001.jpg"))
    a = [(l.text, l.quad) for l in pipe.read_array(img).lines]
    b = [(l.text, l.quad) for l in zoo_pipeline.read_array(img).lines]
    assert a == b and a
    assert deploy.load(tmp_path / "det").predict([str(PHOTOS / "photo_001.jpg")])[0]  # the det folder runs alone


# ---- tasks ---------------------------------------------------------------------------------------------------------

def test_ocr_det_task_scores_labels_perfectly_and_collapse_badly():
    from edgeslim.tasks import get_task

    t = get_task("ocr-det")
    _, ev = t.load(None)
    as_pred = [np.stack(p.quads) / np.array([p.image.shape[1], p.image.shape[0]], np.float32) for p in ev]
    assert t.score(as_pred, ev)["metric"] == pytest.approx(1.0)
    assert t.score([np.zeros((0, 4, 2), np.float32)] * len(ev), ev)["metric"] == 0.0
    shifted = [q + 0.2 for q in as_pred]
    assert t.fidelity(shifted, as_pred)["exact_match"] < 0.5
    spec = t.deploy_spec()
    back = type(t).from_deploy_spec(spec)
    assert back.resize == t.resize and back.db == t.db


def test_ocr_cls_task_on_bundled_crops():
    import onnx

    from edgeslim.engines import get_engine
    from edgeslim.tasks import get_task
    from edgeslim.tasks.base import evaluate
    from edgeslim.zoo import resolve

    p = resolve("ppocr-cls")
    t = get_task("ocr-cls").bind(onnx.load(str(p)))
    calib, ev = t.load(None)
    assert calib and sum(s.label for s in ev) * 2 == len(ev)  # every line upright and turned
    preds, _ = evaluate(get_engine("ort").load(p, 2), t, ev)
    assert t.score(preds, ev)["metric"] > 0.9
    flipped = [(1 - k, q) for k, q in preds]
    assert t.score(flipped, ev)["metric"] < 0.1 and t.fidelity(flipped, preds)["exact_match"] < 0.1


def test_photo_labels_errors_name_file_and_line(tmp_path):
    from edgeslim.errors import DataError

    (tmp_path / "labels.tsv").write_text("a.jpg\t1,2,3\t0\tX\n")
    with pytest.raises(DataError, match=r"labels.tsv:1: .*8 numbers"):
        load_photo_set(tmp_path)
    (tmp_path / "labels.tsv").write_text("a.jpg\t0,0,9,0,9,9,0,9\t0\tX\n")
    with pytest.raises(DataError, match=r"labels.tsv:1: .*a.jpg.*not found"):
        load_photo_set(tmp_path)


# ---- the command ---------------------------------------------------------------------------------------------------

def test_cli_json_and_draw(tmp_path):
    out = tmp_path / "drawn.png"
    r = edgeslim("ocr", PHOTOS / "photo_000.jpg", "--json", "--draw", out)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[0])
    assert d["width"] > 0 and len(d["lines"]) >= 3
    assert all(len(l["quad"]) == 4 and l["text"] and 0.5 <= l["score"] <= 1 for l in d["lines"])
    pic = cv2.imread(str(out))
    src = cv2.imread(str(PHOTOS / "photo_000.jpg"))
    assert pic.shape == (src.shape[0], 2 * src.shape[1], 3)
    again = edgeslim("ocr", PHOTOS / "photo_000.jpg", "--draw", out)  # an existing file is not replaced silently
    _one_line_error(again, "drawn.png", "--force")


def test_cli_bad_inputs(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not an image")
    _one_line_error(edgeslim("ocr", fake), "notes.jpg", "cannot decode")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(edgeslim("ocr", empty), "empty", "no images")
    dot = tmp_path / "dot.png"
    cv2.imwrite(str(dot), np.zeros((1, 1, 3), np.uint8))
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.full((40, 20000, 3), 255, np.uint8))
    drawn = tmp_path / "drawn"
    # several inputs, the bad one last: nothing is printed or drawn for the good ones either
    r = edgeslim("ocr", PHOTOS / "photo_000.jpg", dot, "--draw", drawn)
    _one_line_error(r, "dot.png", "1x1")
    assert r.stdout == "" and not drawn.exists()
    _one_line_error(edgeslim("ocr", wide), "wide.png", "20000x40")
    _one_line_error(edgeslim("ocr", PHOTOS / "photo_000.jpg", "--models", empty), "pipeline.json")
    _one_line_error(edgeslim("ocr", PHOTOS / "photo_000.jpg", "--det-limit", "huge"), "--det-limit")


def test_cli_photo_without_text(tmp_path):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((300, 400, 3), 180, np.uint8))
    r = edgeslim("ocr", blank, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lines"] == []


def test_optimize_pipeline_refuses_a_bad_photo_folder_before_any_work(tmp_path):
    empty = tmp_path / "photos"
    empty.mkdir()
    out = tmp_path / "out"
    _one_line_error(edgeslim("optimize", "ocr-pipeline", "--data", empty, "-o", out), "photos", "labels.tsv")
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_pipeline_pick_prefers_the_smallest_of_the_speed_tie():
    from types import SimpleNamespace

    from edgeslim.apps.ocr.optimize import pipeline_pick
    from edgeslim.study import Candidate

    cands = {c.id: c for c in (
        Candidate(id="ort/fp32", recipe="fp32", engine="ort", size_bytes=10_900_000, fidelity={"exact_match": 1.0}),
        Candidate(id="ort/mixed", recipe="mixed", engine="ort", size_bytes=4_800_000, fidelity={"exact_match": 0.93}),
        Candidate(id="ort/int8", recipe="int8", engine="ort", size_bytes=3_100_000, status="rejected"),
        Candidate(id="ort/w8", recipe="w8", engine="ort", size_bytes=2_900_000, fidelity={"exact_match": 0.92}))}
    study = SimpleNamespace(selected="ort/fp32", candidate=cands.__getitem__,
                            selection={"tied": ["ort/fp32", "ort/mixed", "ort/int8"]})
    # w8 is smaller but not in the tie (slower); int8 is rejected: mixed it is
    assert pipeline_pick(study) == "ort/mixed" and study.selected == "ort/mixed"
    assert study.selection["main_job_selected"] == "ort/fp32"
    alone = SimpleNamespace(selected="ort/fp32", candidate=cands.__getitem__, selection={"tied": ["ort/fp32"]})
    assert pipeline_pick(alone) == "ort/fp32" and "main_job_selected" not in alone.selection


def test_det_size_search_takes_the_fastest_size_inside_the_gate_and_faster_every_round():
    from edgeslim.apps.ocr.optimize import E2E_GATE, _choose_det_size

    def m(cer, hmean):
        return {"cer": cer, "hmean": hmean}

    def t(*seconds):
        return {"seconds": list(seconds), "speedup": 1.0, "speedup_range": [1.0, 1.0]}

    sizes = ["min:736", "max:960", "max:640"]
    metrics = {"original": m(0.30, 0.60), "optimized@min:736": m(0.30, 0.60), "optimized@max:960": m(0.305, 0.595),
               "optimized@max:640": m(0.30, 0.60 - E2E_GATE["hmean"] - 0.02)}
    timing = {"original": t(4, 4, 4), "optimized@min:736": t(2, 2, 2), "optimized@max:960": t(1.5, 1.6, 1.4),
              "optimized@max:640": t(1, 1, 1)}
    rows, chosen, why = _choose_det_size(sizes, metrics, timing)
    assert chosen == "max:960" and "instead of the original's min:736" in why  # max:640 is faster but fails hmean
    assert [r["passed"] for r in rows] == [True, True, False] and "hmean" in rows[2]["reason"]
    timing["optimized@max:960"] = t(1.5, 2.2, 1.4)  # slower than the original input in one round: not shown faster
    assert _choose_det_size(sizes, metrics, timing)[1] == "min:736"
    metrics["optimized@max:960"] = m(0.30 + E2E_GATE["cer"] + 0.01, 0.60)
    timing["optimized@max:960"] = t(1, 1, 1)
    rows, chosen, why = _choose_det_size(sizes, metrics, timing)
    assert chosen == "min:736" and "no smaller input passed" in why and "CER" in rows[1]["reason"]
    assert _choose_det_size(["max:960"], {"original": m(0.3, 0.6), "optimized@max:960": m(0.9, 0.1)},
                            {"original": t(1), "optimized@max:960": t(1)})[1] == "max:960"  # one size: as asked
