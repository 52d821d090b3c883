"""Objectron's single-stage output decoded to 2D box keypoints: pure NumPy, no model.

The network predicts, on a grid (40x30 for the 640x480 chair model), a belief map that peaks at the projected centre
of each object and, at every cell, 16 displacement channels: for each of the box's 8 vertices (dx, dy) from that cell
to the vertex's projection. Decoding (Hou et al., "MobilePose: Real-Time Pose Estimation for Unseen Objects with Weak
Shape Supervision", 2020; MediaPipe's Objectron decoder):

1. peaks: cells whose belief is the maximum of their (2 d + 1)^2 neighbourhood and at least `threshold`;
2. vertices: each vertex is the belief-weighted mean of the votes `cell + displacement * scale` cast by the cells
   within `voting_radius` of the peak whose belief is at least `voting_threshold` and whose vote lies within
   `voting_allowance` cells of the peak's own vote;
3. duplicates: a peak whose 8 vertices all lie within `voting_allowance` cells of a stronger peak's is dropped.

Displacement scale: MediaPipe's decoder multiplies both dx and dy by min(rows, cols). On this model's outputs that is
not what the network learned: the cells around a peak must all vote for the same vertex, `cell + d * s`, so d falls
by 1/s per cell, and on the demo photo that slope gives s of about 27-28 along x and 36-41 along y
(`estimate_offset_scale`, both chairs): (cols, rows) = (30, 40), i.e. displacements are fractions of the image's width
and height. The boxes agree: with (30, 40) each chair lies inside its projected box, with 30 for both axes the boxes
stop well short of the chairs' tops and feet. So the default scale is the grid's (cols, rows); `offset_scale` sets
another (`(30, 30)` reproduces MediaPipe's decoder on this grid).

Points are returned as MediaPipe returns them: normalised to [0, 1] by the grid's width and height, a peak at cell
(row r, col c) sitting at (c / cols, r / rows) (no half-cell shift, as in MediaPipe).

>>> kps = decode(belief, offsets)                              # doctest: +SKIP
>>> kps[0].score, kps[0].points.shape                          # doctest: +SKIP
(0.96, (9, 2))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import InvalidParameterError, ShapeError

__all__ = ["DecodeConfig", "Keypoints", "find_peaks", "decode", "estimate_offset_scale", "NUM_VERTICES"]

NUM_VERTICES = 8


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """The decoder's knobs; the defaults are MediaPipe's for the single-stage Objectron models."""

    threshold: float = 0.6  # a peak's belief must reach this (beliefs in [0, 1])
    local_max_distance: int = 2  # a peak is the maximum of the (2 d + 1)^2 cells around it
    voting_radius: int = 2  # cells within this (Chebyshev) distance of a peak vote; <= 1: the peak's own offsets only
    voting_allowance: float = 1.0  # cells: a vote counts within this of the peak's vote; also the duplicate distance
    voting_threshold: float = 0.2  # a cell votes when its belief is at least this
    offset_scale: tuple[float, float] | None = None  # cells per unit displacement (x, y); None: the grid's (cols, rows)

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidParameterError(f"threshold={self.threshold!r} is not valid: give a belief in (0, 1], e.g. 0.6.")
        if not 0.0 <= self.voting_threshold <= self.threshold:
            raise InvalidParameterError(f"voting_threshold={self.voting_threshold!r} is not valid: give a belief from 0 "
                                        f"to threshold ({self.threshold}), e.g. 0.2.")
        if self.local_max_distance < 0 or self.voting_radius < 0 or self.voting_allowance < 0:
            raise InvalidParameterError("local_max_distance, voting_radius and voting_allowance must be >= 0.")
        if self.offset_scale is not None and (len(self.offset_scale) != 2 or min(self.offset_scale) <= 0):
            raise InvalidParameterError(f"offset_scale={self.offset_scale!r} is not valid: give two positive numbers "
                                        "(x, y), or None for the grid's (cols, rows).")


@dataclass(frozen=True)
class Keypoints:
    """One object's 9 projected box points, normalised to [0, 1]: row 0 the centre (the peak), rows 1-8 the vertices
    in MediaPipe's order (vertex 1 + 4 i + 2 j + k sits at -/+ x for i = 0/1, -/+ y for j, -/+ z for k)."""

    score: float  # the peak's belief
    points: np.ndarray = field(repr=False)  # (9, 2) x, y
    cell: tuple[int, int] = (0, 0)  # the peak's (row, col)


def _check_maps(belief: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(belief, np.float32)
    o = np.asarray(offsets, np.float32)
    b = b.reshape(b.shape[-3:-1]) if b.ndim >= 3 else b  # (1, H, W, 1) / (H, W, 1) -> (H, W)
    o = o.reshape(o.shape[-3:]) if o.ndim > 3 else o
    if b.ndim != 2 or o.shape != (*b.shape, 2 * NUM_VERTICES):
        raise ShapeError(f"belief {np.shape(belief)} and offsets {np.shape(offsets)} do not match: expected a belief "
                         f"map (H, W) and displacements (H, W, {2 * NUM_VERTICES}).")
    return b, o


def find_peaks(belief: np.ndarray, threshold: float = 0.6, local_max_distance: int = 2) -> np.ndarray:
    """Cells (row, col) whose belief is >= `threshold` and the maximum of the (2 d + 1)^2 window around them (ties
    all count, as with MediaPipe's dilate-and-compare), strongest first."""
    b = np.asarray(belief, np.float32)
    d = int(local_max_distance)
    padded = np.pad(b, d, constant_values=-np.inf)
    local_max = np.lib.stride_tricks.sliding_window_view(padded, (2 * d + 1, 2 * d + 1)).max(axis=(2, 3))
    rows, cols = np.nonzero((b >= local_max) & (b >= threshold))
    order = np.argsort(-b[rows, cols], kind="stable")
    return np.stack([rows[order], cols[order]], axis=1)


def _vote(belief: np.ndarray, offsets: np.ndarray, r: int, c: int, scale: np.ndarray, cfg: DecodeConfig) -> np.ndarray:
    """The 8 vertices (grid units) of the object peaking at (r, c)."""
    own = np.array([c, r], np.float32) + offsets[r, c].reshape(NUM_VERTICES, 2) * scale
    if cfg.voting_radius <= 1:
        return own
    k = cfg.voting_radius
    r0, r1 = max(0, r - k), min(belief.shape[0], r + k + 1)
    c0, c1 = max(0, c - k), min(belief.shape[1], c + k + 1)
    rr, cc = np.mgrid[r0:r1, c0:c1]
    votes = np.stack([cc, rr], axis=-1)[:, :, None, :] + offsets[r0:r1, c0:c1].reshape(r1 - r0, c1 - c0, NUM_VERTICES, 2) * scale
    w = belief[r0:r1, c0:c1, None] * (belief[r0:r1, c0:c1, None] >= cfg.voting_threshold)
    w = w * np.all(np.abs(votes - own) <= cfg.voting_allowance, axis=-1)  # (h, w, 8)
    total = w.sum(axis=(0, 1))
    mean = (votes * w[..., None]).sum(axis=(0, 1)) / np.maximum(total, 1e-12)[:, None]
    return np.where(total[:, None] > 0, mean, own)  # the peak always votes unless voting_threshold > its belief


def decode(belief: np.ndarray, offsets: np.ndarray, config: DecodeConfig = DecodeConfig()) -> list[Keypoints]:
    """Objects in a belief map (H, W) with values in [0, 1] and its displacements (H, W, 16), strongest first."""
    config.validate()
    b, o = _check_maps(belief, offsets)
    rows, cols = b.shape
    scale = np.array(config.offset_scale if config.offset_scale is not None else (cols, rows), np.float32)
    kept: list[tuple[float, int, int, np.ndarray]] = []
    for r, c in find_peaks(b, config.threshold, config.local_max_distance):
        verts = _vote(b, o, int(r), int(c), scale, config)
        if any(np.all(np.abs(verts - v) <= config.voting_allowance) for _, _, _, v in kept):
            continue  # a weaker peak of an object already found
        kept.append((float(b[r, c]), int(r), int(c), verts))
    out = []
    for score, r, c, verts in kept:
        pts = np.vstack([[c, r], verts]).astype(np.float64) / np.array([cols, rows], np.float64)
        out.append(Keypoints(score=score, points=pts, cell=(r, c)))
    return out


def estimate_offset_scale(offsets: np.ndarray, cell: tuple[int, int], radius: int = 2) -> tuple[float, float]:
    """The displacement scale (x, y) the network learned, read from its outputs around one object's peak.

    Every cell near the peak points at the same vertex, so `col + dx * sx` is constant and dx falls by 1 / sx per
    column (likewise dy per row). The slope is fitted by least squares over the (2 radius + 1)^2 window for each
    vertex; the median over the 8 vertices is returned.
    """
    o = np.asarray(offsets, np.float64)
    o = o.reshape(o.shape[-3:]) if o.ndim > 3 else o
    r, c = cell
    r0, r1 = max(0, r - radius), min(o.shape[0], r + radius + 1)
    c0, c1 = max(0, c - radius), min(o.shape[1], c + radius + 1)
    if r1 - r0 < 2 or c1 - c0 < 2:
        raise ShapeError(f"cell {cell} leaves fewer than 2 rows or columns inside the {o.shape[:2]} grid to fit a slope.")
    rr, cc = np.mgrid[r0:r1, c0:c1]
    design = np.stack([cc.ravel() - c, rr.ravel() - r, np.ones(rr.size)], axis=1)
    win = o[r0:r1, c0:c1].reshape(-1, NUM_VERTICES, 2)
    coef_x = np.linalg.lstsq(design, win[:, :, 0], rcond=None)[0]  # (3, 8): d dx / d col, d dx / d row, intercept
    coef_y = np.linalg.lstsq(design, win[:, :, 1], rcond=None)[0]
    return float(np.median(-1.0 / coef_x[0])), float(np.median(-1.0 / coef_y[1]))
