"""Quadrilateral geometry for OCR: corner order, perspective crops, reading order, overlap.

Quads are float or int arrays of shape (4, 2), (x, y) corners in the order top-left, top-right, bottom-right,
bottom-left: the order a perspective crop maps to an upright rectangle.
"""

from __future__ import annotations

import numpy as np

__all__ = ["order_quad", "clip_quad", "crop_quad", "reading_order", "quad_iou", "quad_size"]

# A crop this much taller than wide is a vertical line (e.g. Chinese written top to bottom): the recognizer reads
# horizontal lines, so it is turned a quarter counter-clockwise (PP-OCR's rule, which its models were tuned with).
VERTICAL_RATIO = 1.5
# Boxes whose top-left corners are within this many pixels vertically are on one line and read left to right.
SAME_LINE_PX = 10


def order_quad(points: np.ndarray) -> np.ndarray:
    """The 4 corners ordered top-left, top-right, bottom-right, bottom-left (float32).

    The two left-most points (by x, ties kept in input order) are the left side, the upper of them the top-left;
    likewise on the right. This is well defined for any rectangle, also one rotated by 45 degrees.

    >>> order_quad(np.array([[10, 10], [0, 10], [0, 0], [10, 0]])).tolist()
    [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]
    """
    p = np.asarray(points, np.float32).reshape(4, 2)
    by_x = p[np.argsort(p[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1], kind="stable")]
    tr, br = right[np.argsort(right[:, 1], kind="stable")]
    return np.array([tl, tr, br, bl], np.float32)


def clip_quad(quad: np.ndarray, height: int, width: int) -> np.ndarray:
    """Corners moved inside the image (whole pixels, 0..width-1 and 0..height-1)."""
    q = np.asarray(quad, np.float32).copy()
    q[:, 0] = np.trunc(np.clip(q[:, 0], 0, width - 1))
    q[:, 1] = np.trunc(np.clip(q[:, 1], 0, height - 1))
    return q


def quad_size(quad: np.ndarray) -> tuple[int, int]:
    """(width, height) of the upright crop of `quad`: the longer of each pair of opposite sides, truncated."""
    q = np.asarray(quad, np.float32)
    w = max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[2] - q[3]))
    h = max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2]))
    return int(w), int(h)


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The text inside `quad`, warped to an upright rectangle (bicubic, edge pixels repeated outside the image);
    a crop at least 1.5x taller than wide is turned a quarter counter-clockwise to read horizontally."""
    import cv2

    q = np.asarray(quad, np.float32)
    w, h = quad_size(q)
    w, h = max(w, 1), max(h, 1)
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(q, dst)
    crop = cv2.warpPerspective(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if crop.shape[0] >= VERTICAL_RATIO * crop.shape[1]:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def reading_order(quads: list[np.ndarray] | np.ndarray) -> list[int]:
    """Indices of `quads` in reading order: top to bottom by the top-left corner, and left to right among boxes
    whose top-left corners lie within `SAME_LINE_PX` pixels vertically (PP-OCR's rule).

    >>> reading_order([np.array([[50, 3], [60, 3], [60, 9], [50, 9]]), np.array([[0, 0], [9, 0], [9, 9], [0, 9]])])
    [1, 0]
    """
    idx = sorted(range(len(quads)), key=lambda i: (float(quads[i][0][1]), float(quads[i][0][0])))
    for i in range(len(idx) - 1):  # one insertion pass: a box moves left past neighbours on its own line
        for j in range(i, -1, -1):
            a, b = quads[idx[j]], quads[idx[j + 1]]
            if abs(float(b[0][1]) - float(a[0][1])) < SAME_LINE_PX and float(b[0][0]) < float(a[0][0]):
                idx[j], idx[j + 1] = idx[j + 1], idx[j]
            else:
                break
    return idx


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two quadrilaterals (their convex hulls: a labelled quad drawn slightly
    self-crossing still counts by the area it covers).

    shapely, not OpenCV's intersectConvexConvex: that returns 0 for two quads whose edges nearly coincide (a box
    and the same box after a float round trip), which would score a perfect detection as a miss.
    """
    from shapely.geometry import MultiPoint

    pa = MultiPoint(np.asarray(a, np.float64).reshape(-1, 2)).convex_hull
    pb = MultiPoint(np.asarray(b, np.float64).reshape(-1, 2)).convex_hull
    if pa.area <= 0 or pb.area <= 0:
        return 0.0
    inter = pa.intersection(pb).area
    union = pa.area + pb.area - inter
    return float(inter / union) if union > 0 else 0.0
