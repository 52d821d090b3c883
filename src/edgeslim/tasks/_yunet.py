"""YuNet (libfacedetection v3) pre- and post-processing: letterbox/pad, anchor-free decode, NMS.

YuNet predicts, for every cell of three feature maps (strides 8, 16, 32), a class score, an objectness score, a box
(centre offset in cells, log width/height in strides) and five landmarks (offsets in cells). The face score is
`sqrt(cls * obj)` with both clipped to [0, 1]; boxes above the score threshold go through greedy NMS. This is the
decode of libfacedetection's `yunet` head (Wu et al., "YuNet: A Tiny Millisecond-level Face Detector", Machine
Intelligence Research 2023), written against the model's outputs so any engine's runner can feed it.

The input is raw BGR in 0..255 as float32, NCHW, padded right/bottom with zeros: a fixed-size model (640x640) gets
the image scaled to fit and padded to its size, a dynamic one gets it padded to a multiple of 32.

>>> det = YunetDetector.from_zoo("yunet-s")                      # doctest: +SKIP
>>> faces = det.detect(cv2.imread("group.jpg"))                  # doctest: +SKIP
>>> faces[0].box, faces[0].score, faces[0].landmarks.shape       # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import DataError, InvalidParameterError

__all__ = ["STRIDES", "OUTPUT_NAMES", "YunetConfig", "Face", "Letterbox", "letterbox", "priors", "decode", "nms",
           "iou_xywh", "faces_to_array", "to_faces", "canonical_names", "check_outputs"]

STRIDES = (8, 16, 32)
OUTPUT_NAMES = tuple(f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in STRIDES)


@dataclass(frozen=True, kw_only=True)
class YunetConfig:
    """Thresholds of the decode. cv2.FaceDetectorYN's defaults are 0.9 / 0.3 / 5000; 0.6 keeps more small faces."""

    score_threshold: float = 0.6
    nms_threshold: float = 0.3
    top_k: int = 5000
    divisor: int = 32

    def validate(self) -> None:
        for name, v in (("score_threshold", self.score_threshold), ("nms_threshold", self.nms_threshold)):
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise InvalidParameterError(f"{name}={v!r} is not valid: give a number from 0 to 1, e.g. 0.6.")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise InvalidParameterError(f"top_k={self.top_k!r} is not valid: give a whole number >= 1, e.g. 5000.")


@dataclass(frozen=True)
class Face:
    """One detection in image pixels: box (x, y, w, h), score, landmarks 5x2 (right eye, left eye, nose tip, right
    and left mouth corner, as YuNet orders them)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]}


def faces_to_array(faces: Sequence[Face]) -> np.ndarray:
    """N x 15 rows `x y w h lm0x lm0y ... lm4x lm4y score`, the layout cv2.FaceDetectorYN returns."""
    if not faces:
        return np.zeros((0, 15), np.float32)
    return np.stack([np.concatenate([f.box, f.landmarks.ravel(), [f.score]]) for f in faces]).astype(np.float32)


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the model input: scaled by `scale`, then padded right/bottom to (height, width)."""

    scale: float
    height: int
    width: int


def letterbox(img: np.ndarray, input_size: tuple[int, int] | None, divisor: int = 32) -> tuple[np.ndarray, Letterbox]:
    """NCHW float32 feed from a BGR uint8 image. `input_size` (h, w) of a fixed-size model: the image is scaled down
    (never up) to fit and padded to it; None (a dynamic model): only padded to a multiple of `divisor`."""
    import cv2

    h, w = img.shape[:2]
    if input_size is None:
        scale = 1.0
        ph, pw = int(math.ceil(h / divisor) * divisor), int(math.ceil(w / divisor) * divisor)
        resized = img
    else:
        ph, pw = input_size
        scale = min(1.0, ph / h, pw / w)
        if scale < 1.0:
            nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
            resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        else:
            resized = img
    rh, rw = resized.shape[:2]
    x = np.zeros((1, 3, ph, pw), np.float32)
    # one strided copy with the dtype conversion: cheaper than transpose + astype + pad as three passes
    x[0, :, :rh, :rw] = resized.transpose(2, 0, 1)
    return x, Letterbox(scale, ph, pw)


_PRIOR_CACHE: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}


def priors(height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stride, the (column, row) of each cell in the output's row-major order, as float32 vectors."""
    key = (height, width)
    if key not in _PRIOR_CACHE:
        out = []
        for s in STRIDES:
            rows, cols = height // s, width // s
            r, c = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
            out.append((c.astype(np.float32), r.astype(np.float32)))
        _PRIOR_CACHE[key] = out
    return _PRIOR_CACHE[key]


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes (N x 4) and (M x 4) given as x, y, w, h; N x M."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0, None], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1, None], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (np.clip(a[:, 2], 0, None) * np.clip(a[:, 3], 0, None))[:, None] + \
        (np.clip(b[:, 2], 0, None) * np.clip(b[:, 3], 0, None))[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int | None = None) -> np.ndarray:
    """Greedy NMS over x, y, w, h boxes: indices kept, best score first. Ties keep the lower index (a stable sort),
    as cv::dnn::NMSBoxes does; a box whose IoU with a kept one exceeds `threshold` is dropped."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    b = np.asarray(boxes, np.float64)[order]
    x1, y1 = b[:, 0], b[:, 1]
    # cv::Rect2d area and overlap, as OpenCV computes them for NMSBoxes (w*h, no +1)
    x2, y2 = x1 + b[:, 2], y1 + b[:, 3]
    area = b[:, 2] * b[:, 3]
    keep: list[int] = []
    alive = np.ones(len(order), bool)
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.nonzero(alive[i + 1:])[0] + i + 1
        if rest.size == 0:
            break
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        alive[rest[iou > threshold]] = False
    return order[np.asarray(keep, np.int64)]


def check_outputs(outputs: Sequence[np.ndarray] | dict[str, np.ndarray], names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """The outputs by name; a set that lacks one of YuNet's 12 outputs is a `DataError` naming it."""
    if isinstance(outputs, dict):
        got = dict(outputs)
    else:
        names = list(names) if names is not None else list(OUTPUT_NAMES)
        if len(names) != len(outputs):
            raise DataError(f"the detector gave {len(outputs)} outputs for {len(names)} names; a YuNet model has 12 "
                            f"({', '.join(OUTPUT_NAMES)}). Use a YuNet ONNX model.")
        got = dict(zip(names, outputs))
    missing = [n for n in OUTPUT_NAMES if n not in got]
    if missing:
        raise DataError(f"the model has no output {missing[0]!r}; a YuNet model has {', '.join(OUTPUT_NAMES)}. "
                        "Use a YuNet ONNX model (libfacedetection.train or OpenCV Zoo).")
    return got


def canonical_names(names: Sequence[str]) -> list[str]:
    """Output names to decode by: the runner's own when they are YuNet's; otherwise (an engine that renames blobs)
    the ONNX graph order, which for every YuNet export is `OUTPUT_NAMES`."""
    names = list(names)
    return names if set(OUTPUT_NAMES) <= set(names) else list(OUTPUT_NAMES)


def decode(outputs: Sequence[np.ndarray] | dict[str, np.ndarray], height: int, width: int,
           config: YunetConfig = YunetConfig(), names: Sequence[str] | None = None,
           batch_index: int = 0) -> np.ndarray:
    """Faces as N x 15 rows (x, y, w, h, 5 landmarks, score) in model-input pixels, after NMS, best first.

    `outputs` are the model's 12 outputs (by name, or in `names` order, default `OUTPUT_NAMES`); `height`/`width`
    the model input size they came from.
    """
    got = check_outputs(outputs, names)
    rows = []
    for (cx, cy), s in zip(priors(height, width), STRIDES):
        cls = np.asarray(got[f"cls_{s}"][batch_index]).reshape(-1)
        obj = np.asarray(got[f"obj_{s}"][batch_index]).reshape(-1)
        if cls.size != cx.size:
            raise DataError(f"output cls_{s} has {cls.size} cells, but a {height}x{width} input gives {cx.size}; "
                            "the input size does not match the model.")
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        # threshold first: only a few hundred of the 8400 cells survive, so the exp/decode work stays small
        idx = np.nonzero(score >= config.score_threshold)[0]
        if idx.size == 0:
            continue
        bb = np.asarray(got[f"bbox_{s}"][batch_index]).reshape(-1, 4)[idx].astype(np.float32)
        kp = np.asarray(got[f"kps_{s}"][batch_index]).reshape(-1, 10)[idx].astype(np.float32)
        c, r = cx[idx], cy[idx]
        ccx, ccy = (c + bb[:, 0]) * s, (r + bb[:, 1]) * s
        w, h = np.exp(bb[:, 2]) * s, np.exp(bb[:, 3]) * s
        out = np.empty((idx.size, 15), np.float32)
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = ccx - w / 2, ccy - h / 2, w, h
        out[:, 4:14:2] = (kp[:, 0::2] + c[:, None]) * s
        out[:, 5:14:2] = (kp[:, 1::2] + r[:, None]) * s
        out[:, 14] = score[idx]
        rows.append(out)
    if not rows:
        return np.zeros((0, 15), np.float32)
    dets = np.concatenate(rows)
    # overlaps of integer boxes (truncated x, y, w, h), as libfacedetection and cv2.FaceDetectorYN compute them: on
    # small faces float overlaps differ by a few percent, which flips NMS decisions near the threshold
    keep = nms(np.trunc(dets[:, :4]), dets[:, 14], config.nms_threshold, config.top_k)
    return dets[keep]


def to_faces(dets: np.ndarray, scale: float = 1.0) -> list[Face]:
    """Face objects in original-image pixels from N x 15 decoded rows of a letterboxed input."""
    inv = 1.0 / scale
    return [Face(box=d[:4].astype(np.float64) * inv, score=float(d[14]), landmarks=d[4:14].reshape(5, 2).astype(np.float64) * inv)
            for d in dets]
