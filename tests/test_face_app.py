"""Faces: YuNet decode/NMS, parity with cv2.FaceDetectorYN, the detect task, the HyperFAS port, beautification, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest

from conftest import SHARED

from edgeslim.apps.face.antispoof import (AntiSpoof, build_onnx, crop_face, numpy_forward, preprocess, read_h5)
from edgeslim.apps.face.beauty import BeautyConfig, Beautifier, roi_of, warp_maps
from edgeslim.apps.face.yunet import YunetDetector
from edgeslim.tasks._yunet import OUTPUT_NAMES, YunetConfig, decode, faces_to_array, iou_xywh, letterbox, nms
from edgeslim.errors import DataError, ModelLoadError
from edgeslim.tasks import get_task
from edgeslim.tasks.base import evaluate
from edgeslim.tasks.detect import DetectTask, average_precision, box_agreement, match_level

MODELS = SHARED / "models"
FACES = SHARED / "data" / "faces"
CALIB = FACES / "wider_val_calib"  # not held out: parity checks and the video fixture use these photos
SPOOF = SHARED / "data" / "images" / "hyperfas_fake_screen.png"
PORTRAIT = CALIB / "images" / "13--Interview" / "13_Interview_Interview_2_People_Visible_13_204.jpg"

needs_shared = pytest.mark.skipif(not (MODELS / "yunet_s_640_640.onnx").exists(), reason="shared models not present")


def edgeslim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeslim", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


# ---- decode / NMS on synthetic outputs ------------------------------------------------------------------------

def _synthetic(h: int, w: int, cells: dict[tuple[int, int, int], tuple[float, float, list, list]]):
    """Zero YuNet outputs for an h x w input with chosen cells set: (stride, row, col) -> (cls, obj, bbox4, kps10)."""
    outs = {}
    for s in (8, 16, 32):
        n = (h // s) * (w // s)
        outs[f"cls_{s}"] = np.zeros((1, n, 1), np.float32)
        outs[f"obj_{s}"] = np.zeros((1, n, 1), np.float32)
        outs[f"bbox_{s}"] = np.zeros((1, n, 4), np.float32)
        outs[f"kps_{s}"] = np.zeros((1, n, 10), np.float32)
    for (s, r, c), (cls, obj, bb, kp) in cells.items():
        i = r * (w // s) + c
        outs[f"cls_{s}"][0, i, 0], outs[f"obj_{s}"][0, i, 0] = cls, obj
        outs[f"bbox_{s}"][0, i] = bb
        outs[f"kps_{s}"][0, i] = kp
    return [outs[n] for n in OUTPUT_NAMES]


def test_decode_box_landmarks_and_score():
    kp = [0.5, -0.25, 1.0, 0.0, 0.0, 1.0, -1.0, 2.0, 0.25, 0.5]
    outs = _synthetic(64, 96, {(16, 2, 3): (0.81, 1.2, [0.5, 0.25, np.log(2.0), 0.0], kp)})
    d = decode(outs, 64, 96, YunetConfig(score_threshold=0.5))
    assert d.shape == (1, 15)
    # centre ((3 + 0.5) * 16, (2 + 0.25) * 16) = (56, 36); w = 2 * 16, h = 16
    np.testing.assert_allclose(d[0, :4], [56 - 16, 36 - 8, 32, 16], atol=1e-4)
    np.testing.assert_allclose(d[0, 4:14:2], (np.array(kp[0::2]) + 3) * 16, atol=1e-4)
    np.testing.assert_allclose(d[0, 5:14:2], (np.array(kp[1::2]) + 2) * 16, atol=1e-4)
    assert d[0, 14] == pytest.approx(np.sqrt(0.81 * 1.0))  # obj clipped to 1


def test_decode_threshold_and_order():
    cells = {(8, 0, 0): (0.25, 0.25, [0, 0, 0, 0], [0] * 10),     # score 0.25: below 0.3
             (8, 5, 5): (0.64, 1.0, [0, 0, 0, 0], [0] * 10),      # 0.8
             (32, 1, 1): (0.81, 0.81, [0, 0, 1.0, 1.0], [0] * 10)}  # 0.81, far from the others
    d = decode(_synthetic(64, 64, cells), 64, 64, YunetConfig(score_threshold=0.3))
    np.testing.assert_allclose(d[:, 14], [0.81, 0.8], atol=1e-6)
    assert decode(_synthetic(64, 64, {}), 64, 64).shape == (0, 15)
    with pytest.raises(DataError, match="input size does not match"):
        decode(_synthetic(64, 64, {}), 64, 96)


def test_nms_suppresses_overlaps_above_threshold_only():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 10, 10], [0, 5, 10, 10]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.8])
    # IoU(b1, b0) = 90/110 = 0.82; IoU(b1, b3) = 45/155 = 0.29; IoU(b0, b3) = 50/150 = 0.33
    keep = nms(boxes, scores, 0.3)
    assert list(keep) == [1, 3, 2]
    assert list(nms(boxes, scores, 0.25)) == [1, 2]
    assert list(nms(boxes, scores, 0.3, top_k=2)) == [1]


def test_iou_and_letterbox():
    assert iou_xywh([[0, 0, 10, 10]], [[5, 0, 10, 10]])[0, 0] == pytest.approx(50 / 150)
    assert iou_xywh([[0, 0, 0, 10]], [[0, 0, 0, 10]])[0, 0] == 0.0
    img = np.full((100, 50, 3), 7, np.uint8)
    x, lb = letterbox(img, None)
    assert x.shape == (1, 3, 128, 64) and lb.scale == 1.0
    assert x[0, :, :100, :50].min() == 7 and x[0, :, 100:].max() == 0 and x[0, :, :, 50:].max() == 0
    x, lb = letterbox(np.zeros((1280, 640, 3), np.uint8), (640, 640))
    assert x.shape == (1, 3, 640, 640) and lb.scale == 0.5


# ---- parity with cv2.FaceDetectorYN -----------------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("model", ["yunet_s_640_640.onnx", "yunet_s_dynamic.onnx"])
def test_parity_with_cv2(model):
    path = str(MODELS / model)
    det = YunetDetector.from_model(path, threads=1, config=YunetConfig(score_threshold=0.5))
    ref = cv2.FaceDetectorYN.create(path, "", (640, 640), 0.5, 0.3, 5000)
    imgs = sorted((CALIB / "images").rglob("*.jpg"))[::5]
    total = 0
    for f in imgs:
        img = cv2.imread(str(f))
        x, lb = det.prepare(img)
        feed = np.ascontiguousarray(x[0].transpose(1, 2, 0).astype(np.uint8))  # the very pixels we fed
        if det.input_size is None:  # dynamic: cv2 pads to 32 itself, give it the image
            feed = img
        ref.setInputSize((feed.shape[1], feed.shape[0]))
        _, theirs = ref.detect(feed)
        theirs = np.zeros((0, 15)) if theirs is None else theirs
        ours = faces_to_array(det.detect(img)).astype(np.float64)
        ours[:, :14] *= lb.scale
        assert len(ours) == len(theirs), f
        if len(ours):
            assert np.diag(iou_xywh(ours[:, :4], theirs[:, :4])).min() > 0.99
            np.testing.assert_allclose(ours[:, 14], theirs[:, 14], atol=1e-4)
            np.testing.assert_allclose(ours[:, 4:14], theirs[:, 4:14], atol=0.05)
        total += len(ours)
    assert total > 20


# ---- detect task ----------------------------------------------------------------------------------------------

def test_match_level_ignores_faces_outside_the_level():
    gt = np.array([[0, 0, 10, 10], [50, 50, 10, 10], [100, 100, 10, 10]], float)
    keep = np.array([True, False, True])
    dets = np.array([[0, 0, 10, 10, 0.9], [50, 50, 10, 10, 0.8], [0, 1, 10, 10, 0.7], [200, 200, 5, 5, 0.6]])
    flags, hit = match_level(dets, gt, keep)
    assert list(flags) == [1, -1, 0, 0] and list(hit) == [True, False, False]
    ap = average_precision(dets[:, -1], flags, int(keep.sum()))
    assert ap == pytest.approx(0.5)  # one of two counted faces found, at precision 1
    assert average_precision(np.array([0.9, 0.8]), np.array([1, 1], np.int8), 2) == pytest.approx(1.0)


def test_box_agreement():
    a = [np.array([[0, 0, 10, 10, 0.9]]), np.zeros((0, 15))]
    assert box_agreement(a, a) == (1.0, 1.0)
    b = [np.array([[30, 30, 10, 10, 0.9]]), np.zeros((0, 15))]
    f1, same = box_agreement(a, b)
    assert f1 == 0.0 and same == 0.5


@needs_shared
def test_detect_task_on_wider_levels(tmp_path):
    spec = tmp_path / "split.json"
    spec.write_text(json.dumps({"calib": str(CALIB), "eval": str(FACES / "wider_val_subset")}))
    model = onnx.load(str(MODELS / "yunet_s_640_640.onnx"))
    t = get_task("detect").bind(model)
    calib, ev = t.load(spec)
    assert len(calib) == 32 and len(ev) == 40
    assert {s.name for s in calib}.isdisjoint({s.name for s in ev})
    from edgeslim.engines import get_engine

    runner = get_engine("ort").load(model.SerializeToString(), 2)
    preds, nonfinite = evaluate(runner, t, ev)
    s = t.score(preds, ev)
    assert nonfinite == 0
    assert s["faces_easy"] == 70 and s["faces_medium"] == 132 and s["faces_hard"] == 190  # as SOURCES.md counts
    assert s["recall_easy"] > 0.9 and s["recall_medium"] > 0.85 and s["recall_hard"] > 0.7
    assert s["metric"] == s["recall_hard"] and s["ap_easy"] > 0.9
    assert t.fidelity(preds, preds) == {"exact_match": 1.0, "metric_vs_fp32": 0.0}
    # a model losing its weakest detections loses recall, and the per-level check rejects it
    worse = [p[p[:, -1] >= 0.8] for p in preds]
    s2 = t.score(worse, ev, reference=preds)
    assert s2["recall_hard"] < s["recall_hard"] and s2["worst_level_drop"] > 0.01
    assert t.extra_problem(s2) is not None and t.extra_problem(s) is None
    assert t.fidelity(worse, preds)["exact_match"] < 1.0
    # deploy spec round trip decodes the same
    t2 = DetectTask.from_deploy_spec(json.loads(json.dumps(t.deploy_spec())))
    p2, _ = evaluate(runner, t2.bind(model), ev[:3])
    for a, b in zip(p2, preds[:3]):
        np.testing.assert_allclose(a, b)


@needs_shared
def test_detect_task_label_free_scores_agreement_with_fp32(tmp_path):
    import shutil

    for i in range(4):
        shutil.copy(PORTRAIT, tmp_path / f"p{i}.jpg")
    model = onnx.load(str(MODELS / "yunet_s_640_640.onnx"))
    t = DetectTask().bind(model)
    calib, ev = t.load(tmp_path)
    assert len(calib) == 2 and len(ev) == 2 and t.metric_name == "box_f1_vs_fp32"
    from edgeslim.engines import get_engine

    preds, _ = evaluate(get_engine("ort").load(model.SerializeToString(), 1), t, ev)
    assert t.score(preds, ev)["metric"] == 1.0
    assert all(len(p[p[:, -1] >= 0.6]) == 1 for p in preds)
    shifted = [p.copy() for p in preds]
    for p in shifted:
        p[:, 0] += 1000  # every box moved off its face
    assert t.score(shifted, ev, reference=preds)["metric"] == 0.0


def test_detect_task_bad_data(tmp_path):
    t = DetectTask()
    with pytest.raises(DataError, match="needs --data"):
        t.load(None)
    (tmp_path / "annotations.json").write_text("[{\"image\": \"x.jpg\"}]")
    with pytest.raises(DataError, match="entry 0"):
        t.load(tmp_path)
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"calib": ".", "eval": "."}))
    with pytest.raises(DataError, match="same folder"):
        t.load(spec)


# ---- HyperFAS ---------------------------------------------------------------------------------------------------

@needs_shared
def test_hyperfas_onnx_matches_numpy_reference_and_scores_spoof_fake():
    layers = read_h5(MODELS / "hyperfas_fas.h5")
    model = build_onnx(layers)
    assert [o.name for o in model.graph.output] == ["score"]
    fas = AntiSpoof(model, threads=1)
    rng = np.random.default_rng(0)
    img = cv2.imread(str(SPOOF))
    det = YunetDetector.from_model(MODELS / "yunet_s_dynamic.onnx", threads=1)
    faces = det.detect(img)
    assert len(faces) == 1
    xs = [preprocess(crop_face(img, faces[0].box)), rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)]
    diffs = [abs(fas.score_input(x) - float(numpy_forward(layers, x)[0, 0])) for x in xs]
    assert max(diffs) <= 1e-4
    res = fas.score_faces(img, faces)
    assert 0.0 <= res[0].score < 0.95 and res[0].real is False


def test_hyperfas_rejects_a_non_hdf5_file(tmp_path):
    f = tmp_path / "fas.h5"
    f.write_text("nope")
    with pytest.raises(ModelLoadError, match="not an HDF5 file"):
        read_h5(f)


def test_crop_face_is_square_inside_and_clipped_at_border():
    img = np.zeros((400, 300, 3), np.uint8)
    assert crop_face(img, (100, 100, 50, 100)).shape[:2] == (120, 120)
    assert crop_face(img, (0, 0, 50, 50)).shape[:2] == (55, 55)  # clipped: 1.2 * 50 / 2 = 30 around centre 25


# ---- beautification -------------------------------------------------------------------------------------------

class _FixedDetector:
    """A detector that always reports the same face (to test the rendering alone)."""

    def __init__(self, faces):
        self.faces = faces

    def detect(self, img):
        return self.faces


@needs_shared
def test_beautify_changes_the_face_and_nothing_outside_its_roi():
    img = cv2.imread(str(PORTRAIT))
    det = YunetDetector.from_model(MODELS / "yunet_s_dynamic.onnx", threads=1)
    faces = det.detect(img)
    assert len(faces) == 1
    cfg = BeautyConfig(smooth=0.8, slim=0.8, whiten=0.5, eyes=0.8)
    out, n = Beautifier(_FixedDetector(faces), cfg).apply(img)
    assert n == 1 and out.shape == img.shape
    x1, y1, x2, y2 = roi_of(faces[0].box, img.shape, cfg.roi_scale)
    outside = np.ones(img.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], img[outside])
    inside = np.abs(out[y1:y2, x1:x2].astype(int) - img[y1:y2, x1:x2]).mean()
    assert inside > 1.0
    # strength 0 everywhere: the image comes back unchanged
    same, _ = Beautifier(_FixedDetector(faces), BeautyConfig(smooth=0, slim=0, whiten=0, eyes=0)).apply(img)
    assert np.array_equal(same, img)


@needs_shared
def test_video_tracking_follows_the_face_between_detections():
    img = cv2.imread(str(PORTRAIT))
    det = YunetDetector.from_model(MODELS / "yunet_s_dynamic.onnx", threads=1)
    b = Beautifier(det, BeautyConfig(redetect_every=100))
    h, w = img.shape[:2]
    _, had = b.frame(img)
    assert had and b.detections == 1
    start = b._track[0].copy()
    for k in range(1, 9):  # the scene moves 4 px right and 3 px up per frame
        m = np.float32([[1, 0, 4 * k], [0, 1, -3 * k]])
        _, had = b.frame(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
        assert had
    assert b.detections == 1  # every frame after the first was tracked, not detected
    np.testing.assert_allclose(b._track[0][:2] - start[:2], [32, -24], atol=3)


def test_warp_maps_are_identity_outside_the_warp_circles():
    lm = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], float)
    box = (20, 20, 80, 100)
    mx, my = warp_maps((140, 120), lm, box, (0, 0), slim=1.0, eyes=1.0)
    gy, gx = np.mgrid[0:140, 0:120].astype(np.float32)
    moved = (np.abs(mx - gx) > 1e-4) | (np.abs(my - gy) > 1e-4)
    assert moved.any()
    # only pixels inside the warp circles move: cheeks (x 20 + 0.12/0.88 * 80, y between nose and mouth + 0.1 * 100,
    # radius 0.32 * 80) and eyes (radius 0.45 * eye distance 40)
    circles = [((29.6, 90.0), 25.6), ((90.4, 90.0), 25.6), ((40, 50), 18.0), ((80, 50), 18.0)]
    inside = np.zeros_like(moved)
    for (cx, cy), r in circles:
        inside |= (gx - cx) ** 2 + (gy - cy) ** 2 < r * r
    assert not (moved & ~inside).any()
    assert moved[90, 30] or moved[90, 35]  # the left cheek is pulled
    assert warp_maps((10, 10), lm, box, (0, 0), slim=0, eyes=0) is None


def test_beauty_config_rejects_out_of_range():
    from edgeslim.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="--smooth"):
        BeautyConfig(smooth=1.5).validate()


# ---- CLI -------------------------------------------------------------------------------------------------------

def _one_line_error(r, code, *needles):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@needs_shared
def test_cli_detect_json_and_draw(tmp_path):
    out = tmp_path / "drawn.png"
    r = edgeslim("face", "detect", PORTRAIT, "--models-dir", MODELS, "--json", "--draw", out)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert len(d["faces"]) == 1 and len(d["faces"][0]["landmarks"]) == 5 and d["faces"][0]["score"] > 0.6
    assert cv2.imread(str(out)).shape == cv2.imread(str(PORTRAIT)).shape


@needs_shared
def test_cli_bad_inputs(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_text("not an image")
    _one_line_error(edgeslim("face", "detect", bad, "--models-dir", MODELS), 2, "photo.jpg", "cannot decode")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    out = tmp_path / "o.mp4"
    _one_line_error(edgeslim("face", "beautify", video, "-o", out, "--models-dir", MODELS), 2, "clip.mp4", "cannot decode the video")
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    r = edgeslim("face", "antispoof", blank, "--models-dir", MODELS)
    _one_line_error(r, 1, "wall.png", "no face found")
    r = edgeslim("face", "beautify", blank, "-o", tmp_path / "b.png", "--models-dir", MODELS)
    _one_line_error(r, 1, "no face found")
    assert not (tmp_path / "b.png").exists()


@needs_shared
def test_cli_antispoof_scores_the_screen_photo_fake():
    r = edgeslim("face", "antispoof", SPOOF, "--models-dir", MODELS, "--json")
    assert r.returncode == 0, r.stderr
    faces = json.loads(r.stdout)["faces"]
    assert len(faces) == 1 and faces[0]["real"] is False and faces[0]["score"] < 0.95


@needs_shared
def test_cli_beautify_video_with_preview(tmp_path):
    img = cv2.resize(cv2.imread(str(PORTRAIT)), (700, 400))
    src = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 24, (640, 360))
    for i in range(12):
        dx = int(20 * np.sin(i / 3))
        w.write(np.ascontiguousarray(img[20:380, 30 + dx:670 + dx]))
    w.release()
    out, prev = tmp_path / "out.mp4", tmp_path / "prev.png"
    r = edgeslim("face", "beautify", src, "-o", out, "--preview", prev, "--models-dir", MODELS)
    assert r.returncode == 0, r.stderr
    assert "12 frames" in r.stdout and "a face in 12" in r.stdout
    cap = cv2.VideoCapture(str(out))
    n = 0
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        assert fr.shape == (360, 640, 3)
        n += 1
    assert n == 12
    p = cv2.imread(str(prev))
    assert p is not None and p.shape[1] == 1280


@needs_shared
def test_deployed_detect_folder_and_its_predict_py(tmp_path):
    """An exported detect folder: `edgeslim.deploy.load` and the standalone predict.py (numpy + onnxruntime only)
    find the same faces as the library."""
    from edgeslim import deploy
    model = MODELS / "yunet_s_640_640.onnx"
    task = DetectTask().bind(onnx.load(str(model)))
    out = tmp_path / "dep"
    deploy.export(out, model, "ort", "fp32", task, 1, "dedicated", extra={"source_model": str(model)})
    lib = YunetDetector.from_model(model, threads=1).detect(cv2.imread(str(SPOOF)))
    got = deploy.load(out).predict([str(SPOOF)])[0]
    assert len(got) == len(lib) == 1
    np.testing.assert_allclose(got[0]["box"], lib[0].box, atol=0.01)
    det = YunetDetector.from_model(out, threads=1)
    assert det.input_size == (640, 640) and len(det.detect(cv2.imread(str(SPOOF)))) == 1
    r = subprocess.run([sys.executable, str(out / "predict.py"), str(out), str(SPOOF)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()
    assert len(line) == 1 and "face 0" in line[0]
    box = [float(v) for v in line[0].split("box ")[1].split(",")]
    np.testing.assert_allclose(box, lib[0].box, atol=0.1)
