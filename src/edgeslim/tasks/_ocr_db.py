"""DB post-processing: a text-probability map -> quadrilateral text boxes.

Differentiable Binarization (Liao et al., "Real-time Scene Text Detection with Differentiable Binarization",
AAAI 2020) trains the network to predict a *shrunk* text region; at inference the map is thresholded, each
connected region gets its minimum-area rectangle, boxes whose mean probability is low are dropped, and each
surviving box is grown back ("unclipped") by the offset the paper's shrink used: D = A * r / L (area A,
perimeter L, ratio r). The defaults are PP-OCR's (thresh 0.3, box 0.5, unclip 1.6, 2x2 dilation), so the same
detector gives the same boxes as PaddleOCR and RapidOCR.

The offset uses pyclipper (Clipper's polygon offsetting with round joins, integer coordinates), the library the
DB reference code uses: an analytic rectangle growth differs from it by up to a pixel, and that pixel changes
some crops' recognized text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._ocr_geometry import order_quad

__all__ = ["DBConfig", "db_boxes", "box_score", "unclip", "min_area_quad"]


@dataclass(frozen=True, kw_only=True)
class DBConfig:
    """Thresholds of DB post-processing (PP-OCR's defaults)."""

    thresh: float = 0.3  # a map pixel is text above this probability
    box_thresh: float = 0.5  # a box is kept when the mean probability inside it reaches this
    unclip_ratio: float = 1.6  # r in D = A * r / L
    max_candidates: int = 1000
    min_size: int = 3  # boxes whose short side is below this (map pixels) are noise
    dilate: bool = True  # 2x2 dilation of the binary map joins characters split by a pixel


def min_area_quad(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The minimum-area rectangle around `points` as 4 corners (top-left, top-right, bottom-right, bottom-left)
    and its short side."""
    import cv2

    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    return order_quad(cv2.boxPoints(rect)), float(min(rect[1]))


def box_score(prob: np.ndarray, quad: np.ndarray) -> float:
    """Mean of `prob` inside the polygon `quad` (float corners, truncated to pixels as fillPoly does)."""
    import cv2

    h, w = prob.shape
    q = np.asarray(quad, np.float64).reshape(-1, 2)
    x0 = int(np.clip(np.floor(q[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(np.ceil(q[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(np.floor(q[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(np.ceil(q[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [(q - [x0, y0]).astype(np.int32)], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def unclip(quad: np.ndarray, ratio: float) -> np.ndarray:
    """Grow a polygon outward by D = area * ratio / perimeter (round joins). Returns the grown polygon's points."""
    import cv2
    import pyclipper

    q = np.asarray(quad, np.float32).reshape(-1, 2)
    area = abs(float(cv2.contourArea(q)))
    length = float(cv2.arcLength(q.reshape(-1, 1, 2), True))
    if length <= 0:
        return q
    off = pyclipper.PyclipperOffset()
    off.AddPath(q.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    grown = off.Execute(area * ratio / length)
    if not grown:
        return q
    return np.asarray(max(grown, key=len), np.float32).reshape(-1, 2)


def db_boxes(prob: np.ndarray, out_hw: tuple[int, int], cfg: DBConfig = DBConfig()) -> tuple[np.ndarray, list[float]]:
    """Quads (N, 4, 2) int32 in an image of size `out_hw` = (height, width) and their scores, from a DB probability
    map `prob` (H, W) in [0, 1] that covers the whole image.

    >>> m = np.zeros((64, 64), np.float32); m[20:30, 10:50] = 0.9
    >>> boxes, scores = db_boxes(m, (128, 128))
    >>> boxes.shape, round(scores[0], 2)
    ((1, 4, 2), 0.9)
    """
    import cv2

    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"db_boxes: expected a 2-D probability map, got shape {prob.shape}")
    h, w = prob.shape
    out_h, out_w = out_hw
    bitmap = (prob > cfg.thresh).astype(np.uint8)
    if cfg.dilate:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[: cfg.max_candidates]:
        quad, short = min_area_quad(contour)
        if short < cfg.min_size:
            continue
        score = box_score(prob, quad)
        if score < cfg.box_thresh:
            continue
        quad, short = min_area_quad(unclip(quad, cfg.unclip_ratio))
        if short < cfg.min_size + 2:
            continue
        quad[:, 0] = np.clip(np.round(quad[:, 0] / w * out_w), 0, out_w)
        quad[:, 1] = np.clip(np.round(quad[:, 1] / h * out_h), 0, out_h)
        boxes.append(quad.astype(np.int32))
        scores.append(score)
    return (np.stack(boxes) if boxes else np.zeros((0, 4, 2), np.int32)), scores
