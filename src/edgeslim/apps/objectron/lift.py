"""2D box keypoints lifted to a 3D box: pose by EPnP (OpenCV), box proportions by a linear solve, then refined.

One camera sees only directions, so the box comes out up to scale: the rotation is exact, the translation and the
box's dimensions share one unknown factor; here the box's longest side is the unit.

EPnP (Lepetit, Moreno-Noguer and Fua, "EPnP: An Accurate O(n) Solution to the PnP Problem", IJCV 2009) needs the
object's 3D model, and a detected box's proportions are unknown (a chair is taller than it is wide). So the lift runs
`cv2.solvePnP(..., SOLVEPNP_EPNP)` on the unit cube for a first rotation; with the rotation fixed the projection
equations are linear in the box's three dimensions and its translation, solved by SVD; EPnP again on the box with
those proportions; then Levenberg-Marquardt on the pixel reprojection error over rotation, translation and
proportions together. Keypoints projected from a box are recovered exactly. MediaPipe instead solves EPnP's control
points for a free parallelepiped and fits a box to it afterwards; this keeps the box rectangular throughout.

Coordinates are OpenCV's: x right, y down, z forward from the camera. The camera is a pinhole at the image centre
whose field of view along the image's longer side is `fov_deg` (65 degrees is MediaPipe's Objectron camera: focal
length 503 px for 640x480).

>>> K = camera_matrix(480, 640)                                   # doctest: +SKIP
>>> pose = lift_box(points_px, K)                                 # doctest: +SKIP
>>> pose.rotation, pose.translation, pose.projected               # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import InvalidParameterError, ShapeError

__all__ = ["UNIT_BOX", "BOX_EDGES", "BoxPose", "camera_matrix", "project_box", "lift_box"]

# centre + 8 vertices of the unit cube, in MediaPipe's order: vertex 1 + 4 i + 2 j + k at ((-1)^(1-i), (-1)^(1-j),
# (-1)^(1-k)) / 2
UNIT_BOX = np.array([[0, 0, 0]] + [[(i - 0.5), (j - 0.5), (k - 0.5)] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                    np.float64)
# the 12 edges as pairs of vertex indices, 4 along each of x, y, z
BOX_EDGES = ((1, 5), (2, 6), (3, 7), (4, 8), (1, 3), (5, 7), (2, 4), (6, 8), (1, 2), (3, 4), (5, 6), (7, 8))


@dataclass(frozen=True)
class BoxPose:
    """A 3D box up to scale: X_camera = rotation @ (dimensions * UNIT_BOX) + translation, longest side 1."""

    rotation: np.ndarray = field(repr=False)  # (3, 3)
    translation: np.ndarray = field(repr=False)  # (3,), in units of the box's longest side
    dimensions: np.ndarray = field(repr=False)  # (3,) side lengths along the box's x, y, z; the largest is 1
    projected: np.ndarray = field(repr=False)  # (9, 2) the box's centre and vertices projected, pixels
    reprojection_error: float = 0.0  # RMS pixels between `projected` and the keypoints it was fitted to

    def to_dict(self) -> dict:
        return {"rotation": np.round(self.rotation, 6).tolist(), "translation": np.round(self.translation, 6).tolist(),
                "dimensions": np.round(self.dimensions, 6).tolist(),
                "projected": np.round(self.projected, 2).tolist(), "reprojection_error": round(self.reprojection_error, 3)}


def camera_matrix(width: int, height: int, fov_deg: float = 65.0) -> np.ndarray:
    """Intrinsics K (3x3) of a pinhole camera at the image centre with `fov_deg` along the longer side."""
    if width <= 0 or height <= 0:
        raise InvalidParameterError(f"image size {width}x{height} is not valid: give a positive width and height.")
    if not 1.0 <= fov_deg <= 170.0:
        raise InvalidParameterError(f"fov_deg={fov_deg!r} is not valid: give a field of view from 1 to 170 degrees.")
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def project_box(rotation: np.ndarray, translation: np.ndarray, dimensions: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(9, 2) pixels of the box's centre and vertices."""
    X = (UNIT_BOX * np.asarray(dimensions, np.float64)) @ np.asarray(rotation, np.float64).T + np.asarray(translation, np.float64)
    uvw = X @ np.asarray(K, np.float64).T
    return uvw[:, :2] / uvw[:, 2:3]


def _epnp(model: np.ndarray, points: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    try:
        ok, rvec, tvec = cv2.solvePnP(model, points, K, None, flags=cv2.SOLVEPNP_EPNP)
        if ok:
            rvec, tvec = cv2.solvePnPRefineLM(model, points, K, None, rvec, tvec)
    except cv2.error:
        ok = False
    if not ok or tvec[2, 0] <= 0:
        raise InvalidParameterError("EPnP found no box in front of the camera for these keypoints (they are "
                                    "degenerate: coincident or collinear). Pass the 9 keypoints of a box.")
    R, _ = cv2.Rodrigues(rvec)
    return R, tvec.reshape(3)


def _dims_and_translation(R: np.ndarray, rays: np.ndarray) -> np.ndarray | None:
    """With the rotation fixed, (dx, dy, dz, tx, ty, tz) up to scale from the normalised image points `rays` (9, 2):
    X_i = R diag(d) v_i + t must satisfy X_i.x = x_i X_i.z and X_i.y = y_i X_i.z, linear in (d, t)."""
    cols = R[None, :, :] * UNIT_BOX[:, None, :]  # (9, 3 coords, 3 dims): coefficient of d_k in X_i
    A = np.zeros((2 * len(rays), 6))
    for a in (0, 1):
        A[a::2, :3] = cols[:, a, :] - rays[:, a:a + 1] * cols[:, 2, :]
        A[a::2, 3 + a] = 1.0
        A[a::2, 5] = -rays[:, a]
    p = np.linalg.svd(A)[2][-1]
    p = p if p[5] > 0 else -p  # the box in front of the camera
    if np.any(p[:3] <= 1e-9 * np.abs(p).max()):
        return None  # no rectangular box in front of the camera fits: keep the proportions we have
    return p / p[:3].max()


def _refine(R: np.ndarray, t: np.ndarray, dims: np.ndarray, pts: np.ndarray, K: np.ndarray,
            iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the pixel reprojection error over rotation (Rodrigues), translation and log-dimensions
    together. OpenCV's `solvePnPRefineLM` refines only the pose of a known model; here the model's proportions move
    too. The depth stays fixed: scaling box and translation together changes no pixel, so freeing all nine would
    leave the normal equations singular. Eight parameters, forward-difference Jacobian."""
    import cv2

    tz = float(t[2])

    def unpack(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return cv2.Rodrigues(q[:3])[0], np.array([q[3], q[4], tz]), np.exp(q[5:])

    def residual(q: np.ndarray) -> np.ndarray:
        return (project_box(*unpack(q), K) - pts).ravel()

    q = np.concatenate([cv2.Rodrigues(R)[0].ravel(), t[:2], np.log(dims)])
    r = residual(q)
    cost, lam, eps = float(r @ r), 1e-3, 1e-6
    for _ in range(iterations):
        J = np.stack([(residual(q + eps * e) - r) / eps for e in np.eye(len(q))], axis=1)
        JtJ, g = J.T @ J, J.T @ r
        while True:
            step = np.linalg.solve(JtJ + lam * np.diag(np.diag(JtJ) + 1e-12), -g)
            cand = q + step
            rc = residual(cand)
            if float(rc @ rc) < cost:
                q, r, cost, lam = cand, rc, float(rc @ rc), max(lam / 10, 1e-9)
                break
            lam *= 10
            if lam > 1e8:
                break
        if lam > 1e8 or np.abs(step).max() < 1e-10:
            break
    R, t, dims = unpack(q)
    s = dims.max()  # the scale is free: the longest side is the unit
    return R, t / s, dims / s


def lift_box(points: np.ndarray, K: np.ndarray, *, iterations: int = 50) -> BoxPose:
    """Rotation, translation and proportions (up to scale) of the box whose centre and 8 vertices project to
    `points` (9, 2) pixels, in MediaPipe's vertex order, through the camera `K`."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if pts.shape != (9, 2) or not np.all(np.isfinite(pts)):
        raise ShapeError(f"points {np.shape(points)} are not valid: give the 9 finite (x, y) box keypoints (centre first).")
    K = np.asarray(K, np.float64)
    dims = np.ones(3)
    R, t = _epnp(UNIT_BOX, pts, K)
    p = _dims_and_translation(R, (pts - K[:2, 2]) / np.diag(K)[:2])
    if p is not None:  # the cube's rotation gives the box's proportions; EPnP again on that box
        dims = p[:3]
        R, t = _epnp(UNIT_BOX * dims, pts, K)
    R, t, dims = _refine(R, t, dims, pts, K, iterations)
    proj = project_box(R, t, dims, K)
    err = float(np.sqrt(np.mean(np.sum((proj - pts) ** 2, axis=1))))
    return BoxPose(rotation=R, translation=t, dimensions=dims, projected=proj, reprojection_error=err)
