"""`optimize --task raw` on every real model at hand (the three RapidOCR models, YuNet) with a small input set made
from real images: each run finishes, no fp32 conversion is rejected (a correct conversion must not look broken to the
metric, even when the fp32 output is all zeros), and the report names why each rejected candidate was rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED

CALIB_PHOTOS = SHARED / "data" / "faces" / "wider_val_calib"  # the photos that may be used for calibration
OCR_LINES = Path(__file__).resolve().parents[1] / "src" / "edgeslim" / "data" / "ocr_synth"


def _photos(n: int) -> list[np.ndarray]:
    import cv2

    files = sorted(p for p in CALIB_PHOTOS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    assert len(files) == n, f"expected {n} photos in {CALIB_PHOTOS}"
    return [cv2.imread(str(f)) for f in files]


def _lines(n: int) -> list[np.ndarray]:
    import cv2

    files = sorted(OCR_LINES.glob("*.png"))[:n]
    return [cv2.imread(str(f)) for f in files]


def _det_inputs(n: int = 8) -> np.ndarray:
    """Text pages: bundled OCR lines pasted onto a plain canvas (two of them left empty: an all-zero output)."""
    import cv2

    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    lines = _lines(4 * n)
    xs = []
    for i in range(n):
        page = np.full((320, 320, 3), 235, np.uint8)
        if i >= 2:
            for j, im in enumerate(lines[4 * i : 4 * i + 4]):
                h = 40
                w = min(300, int(im.shape[1] * h / im.shape[0]))
                page[20 + 75 * j : 20 + 75 * j + h, 10 : 10 + w] = cv2.resize(im, (w, h))
        xs.append(((page[:, :, ::-1] / 255.0 - mean) / std).transpose(2, 0, 1))
    return np.stack(xs).astype(np.float32)


def _line_inputs(n: int, width: int) -> np.ndarray:
    import cv2

    xs = [(cv2.resize(im, (width, 48)).astype(np.float32) / 255.0 - 0.5).transpose(2, 0, 1) / 0.5 for im in _lines(n)]
    return np.stack(xs).astype(np.float32)


def _yunet_inputs(n: int = 6) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(im, (640, 640)).astype(np.float32).transpose(2, 0, 1) for im in _photos(n)])


MODELS = {
    "ppocrv4-det": lambda: ("x", _det_inputs()),
    "ppocr-cls": lambda: ("x", _line_inputs(8, 192)),
    "ppocrv4-rec": lambda: ("x", _line_inputs(8, 320)),
    "yunet-s": lambda: ("input", _yunet_inputs()),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_optimize_every_zoo_model(name, tmp_path):
    import edgeslim
    from edgeslim.zoo import resolve

    path = resolve(name, local_dir=SHARED / "models")
    input_name, x = MODELS[name]()
    np.savez(tmp_path / "in.npz", **{input_name: x})
    res = edgeslim.optimize(path, task="raw", data=tmp_path / "in.npz", recipes="fp32,fp16,int8",
                            engine_precisions="mnn:fp32,ncnn:fp32", rounds=1, confirm_top=0, cache=False,
                            outdir=tmp_path / "out")
    by = {c.id: c for c in res.candidates}
    for cid in ("ort/original", "ort/fp32", "mnn/fp32", "ncnn/fp32"):
        assert by[cid].status == "ok", (cid, by[cid].status, by[cid].reason)
        assert by[cid].metric >= 0.999, (cid, by[cid].metric)  # exact conversions agree with fp32
    report = (tmp_path / "out" / "report.md").read_text()
    d = json.loads((tmp_path / "out" / "results.json").read_text())
    for c in d["candidates"]:
        if c["status"] != "ok":
            assert c["reason"] and c["reason"].replace("|", "/") in report, c
    assert res.selected is not None and (tmp_path / "out" / "deploy.json").exists()
    if name == "ppocrv4-det":  # plain fp16 flips thousands of pixels; fp16 keeps its one breaking node in fp32
        assert by["ort/fp16"].status == "ok", by["ort/fp16"].reason
        assert 1 <= len(by["ort/fp16"].info["fp32_nodes"]) <= 5
