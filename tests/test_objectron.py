"""Objectron: belief/displacement decoding on synthetic maps, the EPnP lift on boxes projected from known poses, the
chair model on its demo photo, and the `edgeslim objectron` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHARED

from edgeslim.apps.objectron.decode import DecodeConfig, decode, estimate_offset_scale, find_peaks
from edgeslim.apps.objectron.lift import UNIT_BOX, camera_matrix, lift_box, project_box
from edgeslim.errors import InvalidParameterError, ModelLoadError, ShapeError

cv2 = pytest.importorskip("cv2")

MODELS = SHARED / "models"
MODEL = MODELS / "objectron_chair_640x480_int8.tflite"
PHOTO = SHARED / "data" / "images" / "objectron_chair.jpg"

# The demo photo (480x640, white background) shows two chairs, not one. Their regions (x1, y1, x2, y2) in pixels were
# read by eye from the photo drawn with a 40 px grid (top of the backrest, outermost leg or seat edge, lowest foot),
# then confirmed against the extent of the photo's non-white pixels on each side.
DARK_CHAIR_UPPER_RIGHT = (258, 33, 415, 336)
WOODEN_CHAIR_LOWER_LEFT = (54, 300, 237, 607)

needs_model = pytest.mark.skipif(not (MODEL.exists() and PHOTO.exists()), reason="shared models/data not present")


def edgeslim(*args):
    return subprocess.run([sys.executable, "-m", "edgeslim", *map(str, args)], capture_output=True, text=True, timeout=120)


# ---- decoding on synthetic maps ---------------------------------------------------------------------------------

def _paint(belief: np.ndarray, offsets: np.ndarray, cell: tuple[int, int], peak: float, vertices: np.ndarray,
           scale=(30.0, 40.0), radius: int = 2) -> None:
    """An object peaking at `cell` with `vertices` (8, 2) in grid units: a belief bump and, around it, the
    displacements that point every cell at the same vertices."""
    rows, cols = belief.shape
    r, c = cell
    rr, cc = np.mgrid[0:rows, 0:cols]
    belief[:] = np.maximum(belief, peak * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / 2.0))
    for y in range(max(0, r - radius), min(rows, r + radius + 1)):
        for x in range(max(0, c - radius), min(cols, c + radius + 1)):
            offsets[y, x] = ((vertices - [x, y]) / np.array(scale)).ravel()


def _vertices(cx: float, cy: float, rng) -> np.ndarray:
    return np.array([cx, cy]) + rng.uniform(-6, 6, (8, 2))


def test_find_peaks_local_maxima_above_threshold():
    b = np.zeros((12, 10), np.float32)
    b[2, 3], b[3, 4] = 0.9, 0.8  # 0.8 lies within 2 cells of the stronger 0.9: not a peak
    b[9, 8] = 0.7
    b[6, 0] = 0.55  # an isolated maximum below the threshold
    assert find_peaks(b, 0.6, 2).tolist() == [[2, 3], [9, 8]]
    assert find_peaks(b, 0.6, 0).tolist() == [[2, 3], [3, 4], [9, 8]]  # a 1x1 window: every cell is its own maximum


def test_decode_recovers_known_keypoints_exactly():
    rng = np.random.default_rng(0)
    belief, offsets = np.zeros((40, 30), np.float32), np.zeros((40, 30, 16), np.float32)
    verts = _vertices(14.0, 21.0, rng)
    _paint(belief, offsets, (21, 14), 0.93, verts)
    (kp,) = decode(belief, offsets)
    assert kp.cell == (21, 14)
    assert kp.score == pytest.approx(0.93)
    expected = np.vstack([[14, 21], verts]) / [30, 40]  # normalised by the grid's width and height
    np.testing.assert_allclose(kp.points, expected, atol=1e-5)


def test_decode_two_objects_strongest_first_and_below_threshold_ignored():
    rng = np.random.default_rng(1)
    belief, offsets = np.zeros((40, 30), np.float32), np.zeros((40, 30, 16), np.float32)
    a, b, weak = _vertices(6.0, 8.0, rng), _vertices(22.0, 30.0, rng), _vertices(22.0, 8.0, rng)
    _paint(belief, offsets, (8, 6), 0.8, a)
    _paint(belief, offsets, (30, 22), 0.95, b)
    _paint(belief, offsets, (8, 22), 0.55, weak)  # under the 0.6 threshold
    kps = decode(belief, offsets)
    assert [k.cell for k in kps] == [(30, 22), (8, 6)]
    np.testing.assert_allclose(kps[0].points[1:] * [30, 40], b, atol=1e-4)
    np.testing.assert_allclose(kps[1].points[1:] * [30, 40], a, atol=1e-4)
    assert [k.cell for k in decode(belief, offsets, DecodeConfig(threshold=0.5))] == [(30, 22), (8, 6), (8, 22)]


def test_decode_votes_ignore_outliers_and_duplicates_merge():
    rng = np.random.default_rng(2)
    belief, offsets = np.zeros((40, 30), np.float32), np.zeros((40, 30, 16), np.float32)
    verts = _vertices(15.0, 20.0, rng)
    _paint(belief, offsets, (20, 15), 0.9, verts)
    offsets[21, 16] += 0.5  # one neighbour votes 15-20 cells away: outside the allowance, it must not move the mean
    belief[20, 16] = 0.9  # a tie: two peaks for one object, reported once
    kps = decode(belief, offsets)
    assert len(kps) == 1
    np.testing.assert_allclose(kps[0].points[1:] * [30, 40], verts, atol=1e-4)
    # within the allowance, a neighbour's vote is averaged in, weighted by its belief
    offsets[21, 16] = ((verts - [16, 21]) / [30, 40]).ravel() + np.tile([0.5 / 30, 0.0], 8)
    w = float(belief[21, 16])
    (kp,) = decode(belief, offsets)
    shift = kp.points[1:, 0] * 30 - verts[:, 0]
    window = belief[18:23, 13:18]  # the first peak's 5x5 voting window; cells under 0.2 do not vote
    np.testing.assert_allclose(shift, 0.5 * w / window[window >= 0.2].sum(), atol=1e-4)


def test_decode_offset_scale_option_and_validation():
    rng = np.random.default_rng(3)
    belief, offsets = np.zeros((40, 30), np.float32), np.zeros((40, 30, 16), np.float32)
    verts = _vertices(10.0, 12.0, rng)
    _paint(belief, offsets, (12, 10), 0.9, verts, scale=(30.0, 30.0))  # MediaPipe's min(rows, cols) on both axes
    (kp,) = decode(belief, offsets, DecodeConfig(offset_scale=(30.0, 30.0)))
    np.testing.assert_allclose(kp.points[1:] * [30, 40], verts, atol=1e-4)
    (default,) = decode(belief, offsets)  # the grid's (cols, rows): y displacements stretch by 40/30
    np.testing.assert_allclose(default.points[1:, 1] * 40 - 12, (verts[:, 1] - 12) * 4 / 3, atol=1e-4)
    with pytest.raises(InvalidParameterError):
        decode(belief, offsets, DecodeConfig(threshold=1.5))
    with pytest.raises(ShapeError):
        decode(belief, offsets[:, :, :8])


def test_estimate_offset_scale_reads_the_learned_scale():
    rng = np.random.default_rng(4)
    belief, offsets = np.zeros((40, 30), np.float32), np.zeros((40, 30, 16), np.float32)
    _paint(belief, offsets, (15, 12), 0.9, _vertices(12.0, 15.0, rng), scale=(30.0, 40.0))
    sx, sy = estimate_offset_scale(offsets, (15, 12))
    assert sx == pytest.approx(30.0, rel=1e-4) and sy == pytest.approx(40.0, rel=1e-4)


# ---- lifting to 3D -----------------------------------------------------------------------------------------------

def _rotation(rvec) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(rvec, np.float64))[0]


@pytest.mark.parametrize("rvec,t,dims", [
    ((0.3, -0.5, 0.2), (0.4, -0.2, 4.0), (1.0, 1.0, 1.0)),  # the unit cube
    ((-0.6, 0.9, -0.1), (-0.5, 0.3, 3.0), (0.5, 1.0, 0.6)),  # chair-like proportions
    ((1.2, 0.2, 0.4), (0.1, 0.6, 6.0), (1.4, 0.7, 0.9)),
])
def test_lift_recovers_pose_and_proportions(rvec, t, dims):
    K = camera_matrix(480, 640)
    R, t, dims = _rotation(rvec), np.array(t), np.array(dims)
    pts = project_box(R, t, dims, K)
    pose = lift_box(pts, K)
    s = dims.max()  # the lift's unit is the box's longest side
    np.testing.assert_allclose(pose.rotation, R, atol=1e-6)
    np.testing.assert_allclose(pose.translation, t / s, atol=1e-6)
    np.testing.assert_allclose(pose.dimensions, dims / s, atol=1e-6)
    np.testing.assert_allclose(pose.projected, pts, atol=1e-6)
    assert pose.reprojection_error < 1e-6


def test_lift_under_noise_stays_close_and_rejects_bad_points():
    K = camera_matrix(640, 480)
    R, t, dims = _rotation((0.2, 0.7, -0.3)), np.array([0.2, 0.1, 3.5]), np.array([0.6, 1.0, 0.5])
    pts = project_box(R, t, dims, K) + np.random.default_rng(5).normal(0, 1.0, (9, 2))
    pose = lift_box(pts, K)
    angle = np.degrees(np.arccos(np.clip((np.trace(pose.rotation.T @ R) - 1) / 2, -1, 1)))
    assert angle < 5 and pose.reprojection_error < 2.0
    np.testing.assert_allclose(pose.rotation @ pose.rotation.T, np.eye(3), atol=1e-9)  # a rotation, always
    assert UNIT_BOX.shape == (9, 3)
    with pytest.raises(ShapeError):
        lift_box(pts[:8], K)
    with pytest.raises(InvalidParameterError):
        camera_matrix(640, 480, fov_deg=0.0)


# ---- the model on its demo photo ---------------------------------------------------------------------------------

def coverage(box: np.ndarray, region: tuple[int, int, int, int]) -> tuple[float, float]:
    """Share of the region inside the projected box's 2D extent, and the region's area over the extent's (the
    benchmark reports the same numbers)."""
    x1, y1 = box.min(axis=0)
    x2, y2 = box.max(axis=0)
    rx1, ry1, rx2, ry2 = region
    iw = max(0.0, min(x2, rx2) - max(x1, rx1))
    ih = max(0.0, min(y2, ry2) - max(y1, ry1))
    area = (rx2 - rx1) * (ry2 - ry1)
    return iw * ih / area, area / ((x2 - x1) * (y2 - y1))


@pytest.fixture(scope="module")
def detector():
    from edgeslim.apps.objectron import ObjectronDetector

    return ObjectronDetector.from_zoo(local_dir=MODELS, threads=2)


@needs_model
def test_demo_photo_finds_both_chairs_inside_their_boxes(detector):
    img = cv2.imread(str(PHOTO))
    boxes = detector.detect(img)
    assert len(boxes) == 2
    for box, region in zip(sorted(boxes, key=lambda b: -b.keypoints[0, 0]),
                           (DARK_CHAIR_UPPER_RIGHT, WOODEN_CHAIR_LOWER_LEFT)):
        cx, cy = box.keypoints[0]
        assert region[0] <= cx <= region[2] and region[1] <= cy <= region[3]  # its centre is on this chair
        assert box.score > 0.9
        inside, tight = coverage(box.pose.projected[1:], region)
        assert inside >= 0.85  # the box encloses the chair
        assert tight >= 0.4  # and is not the whole photo
        assert box.pose.dimensions[1] == pytest.approx(1.0)  # a chair is taller than wide or deep
        assert box.pose.translation[2] > 0


@needs_model
def test_demo_photo_displacements_scale_with_the_grid_width_and_height(detector):
    """The convention the decoder uses, read from the network: y displacements are in units of the grid's 40 rows,
    x in units of its 30 columns (MediaPipe's min(rows, cols) would make the ratio 1)."""
    from edgeslim.apps.objectron import fit_image

    img = cv2.imread(str(PHOTO))
    logits, offsets = detector.infer(fit_image(img, detector.input_size)[0])
    peaks = find_peaks(1 / (1 + np.exp(-logits)), 0.6, 2)
    assert len(peaks) == 2
    for r, c in peaks:
        sx, sy = estimate_offset_scale(offsets, (int(r), int(c)))
        assert 24 < sx < 36
        assert abs(sy / sx - 40 / 30) < abs(sy / sx - 1.0)


@needs_model
def test_image_size_is_mapped_back(detector):
    img = cv2.imread(str(PHOTO))
    small = detector.detect(img)
    big = detector.detect(cv2.resize(img, (960, 1280), interpolation=cv2.INTER_LINEAR))
    assert len(big) == len(small) == 2
    for a, b in zip(small, big):
        np.testing.assert_allclose(b.keypoints / 2, a.keypoints, atol=12)


def test_fit_image_letterboxes_rgb_in_minus_one_to_one():
    from edgeslim.apps.objectron import fit_image

    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :, 0] = 255  # pure blue in BGR
    x, fit = fit_image(img, (640, 480))
    assert x.shape == (1, 640, 480, 3) and x.dtype == np.float32
    assert fit.scale == pytest.approx(2.4) and fit.pad_x == 0 and fit.pad_y == 200
    np.testing.assert_allclose(x[0, 300, 100], [-1.0, -1.0, 1.0])  # RGB order: blue last
    assert np.all(x[0, :200] == -1.0) and np.all(x[0, 440:] == -1.0)  # black padding above and below


def test_zoo_entry_resolves_from_a_local_dir():
    from edgeslim.zoo import ZOO, resolve

    e = ZOO.get("objectron-chair")
    assert e.url and e.url.startswith("https://") and len(e.sha256) == 64
    if MODEL.exists():
        assert resolve("objectron-chair", local_dir=MODELS) == MODEL  # the sha256 is checked on the way


def test_not_a_model_file(tmp_path):
    from edgeslim.apps.objectron import ObjectronDetector

    p = tmp_path / "x.tflite"
    p.write_bytes(b"not a flatbuffer")
    pytest.importorskip("ai_edge_litert")
    with pytest.raises(ModelLoadError):
        ObjectronDetector.from_model(p)


# ---- the command -------------------------------------------------------------------------------------------------

@needs_model
def test_cli_json_and_draw(tmp_path):
    out = tmp_path / "boxes.png"
    r = edgeslim("objectron", PHOTO, "--models", MODELS, "--json", "--draw", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["objects"]) == 2 and (res["width"], res["height"]) == (480, 640)
    o = res["objects"][0]
    assert np.array(o["rotation"]).shape == (3, 3) and len(o["translation"]) == 3 and np.array(o["projected"]).shape == (9, 2)
    drawn, photo = cv2.imread(str(out)), cv2.imread(str(PHOTO))
    assert drawn.shape == photo.shape and np.abs(drawn.astype(int) - photo).max() > 100  # edges were drawn
    again = edgeslim("objectron", PHOTO, "--models", MODELS, "--draw", out)  # exists: refused without --force
    assert again.returncode == 2 and "--force" in again.stderr


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    r = edgeslim("objectron", text)  # refused before any model is looked up
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "cannot decode the image" in r.stderr
    r = edgeslim("objectron", PHOTO, "--models", tmp_path / "missing")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--models" in r.stderr and "no such folder" in r.stderr
