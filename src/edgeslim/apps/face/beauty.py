"""Real-time face beautification on a CPU: skin smoothing, whitening, face slimming and eye enlarging.

Every step works inside the face's region of interest (the box grown by `roi_scale`) and nothing outside it is
written, so the cost depends on the face size, not the frame size:
- skin mask: an ellipse fitted to the box and landmarks, times a YCrCb skin-colour test, minus the eyes and mouth,
  feathered;
- smoothing: an edge-preserving (bilateral) filter at reduced resolution (`work_size` px), upsampled and blended
  back through the mask: the expensive filter touches ~100x100 pixels whatever the frame size;
- whitening: a log brightening curve (a lookup table) blended through the mask;
- slimming: two local translation warps pulling the cheeks towards the nose, eye enlarging: a local scaling warp
  at each eye (Gustafsson, "Interactive Image Warping", 1993), both one `cv2.remap` of the ROI whose displacement is
  zero outside the warp circles;
- video: the face is tracked across frames: its shift is measured by phase correlation of a 64x64 gray patch and
  applied to box and landmarks; the detector runs on a downscaled frame only every `redetect_every` frames or when
  the shifted patch no longer matches (mean absolute difference above `motion_threshold`), and its landmarks are
  smoothed with an exponential moving average against jitter.

>>> beauty = Beautifier(detector, BeautyConfig(smooth=0.6, slim=0.3))       # doctest: +SKIP
>>> out = beauty.apply(img)                                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import DataError, InvalidParameterError

__all__ = ["BeautyConfig", "Beautifier", "skin_mask", "smooth_skin", "whiten", "warp_maps", "apply_warps",
           "side_by_side", "beautify_video", "VideoStats", "roi_of"]


@dataclass(frozen=True, kw_only=True)
class BeautyConfig:
    """Strengths in 0..1 and the knobs of the real-time path."""

    smooth: float = 0.6
    whiten: float = 0.3
    slim: float = 0.3
    eyes: float = 0.2
    roi_scale: float = 1.6  # the ROI is the face box grown by this factor (cheeks, chin and forehead inside)
    work_size: int = 96  # the smoothing filter runs at this many pixels on the ROI's longer side
    detect_width: int = 320  # video: frames are downscaled to this width for the detector
    redetect_every: int = 12  # video: the detector runs at least every this many frames
    motion_threshold: float = 12.0  # video: re-detect when the tracked face patch differs more than this (0..255)
    ema: float = 0.5  # video: weight of the new landmarks in the moving average

    def validate(self) -> None:
        for n in ("smooth", "whiten", "slim", "eyes"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise InvalidParameterError(f"--{n} {v!r} is not valid: give a strength from 0 to 1, e.g. 0.5.")
        if not 0.0 < self.ema <= 1.0:
            raise InvalidParameterError(f"ema={self.ema!r} is not valid: give a weight in (0, 1].")
        if self.work_size < 16 or self.redetect_every < 1 or self.detect_width < 64:
            raise InvalidParameterError("work_size >= 16, redetect_every >= 1 and detect_width >= 64 are required.")


def roi_of(box: Sequence[float], shape: tuple[int, ...], scale: float) -> tuple[int, int, int, int]:
    """The face ROI (x1, y1, x2, y2): the box grown by `scale` about its centre, clipped to the image."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + w / 2, y + h / 2
    hw, hh = w * scale / 2, h * scale / 2
    H, W = shape[:2]
    return (int(max(0, np.floor(cx - hw))), int(max(0, np.floor(cy - hh))),
            int(min(W, np.ceil(cx + hw))), int(min(H, np.ceil(cy + hh))))


def skin_mask(roi: np.ndarray, box: Sequence[float], landmarks: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """Float32 mask in [0, 1] over the ROI: face ellipse x skin colour, eyes and mouth cut out, feathered.
    `box`/`landmarks` are in image pixels; `origin` is the ROI's top-left corner in the image."""
    import cv2

    h, w = roi.shape[:2]
    ox, oy = origin
    x, y, bw, bh = (float(v) for v in box)
    lm = np.asarray(landmarks, np.float64) - (ox, oy)
    geo = np.zeros((h, w), np.uint8)
    centre = (int(round(x - ox + bw / 2)), int(round(y - oy + bh * 0.55)))
    cv2.ellipse(geo, centre, (max(1, int(bw * 0.55)), max(1, int(bh * 0.62))), 0, 0, 360, 255, -1)
    eye_d = max(2.0, float(np.hypot(*(lm[1] - lm[0]))))
    for p in lm[:2]:  # eyes: keep lashes and iris sharp
        cv2.circle(geo, (int(round(p[0])), int(round(p[1]))), int(eye_d * 0.28), 0, -1)
    mouth = (lm[3] + lm[4]) / 2
    mw = max(2, int(np.hypot(*(lm[4] - lm[3])) * 0.65))
    cv2.ellipse(geo, (int(round(mouth[0])), int(round(mouth[1]))), (mw, max(2, int(mw * 0.45))), 0, 0, 360, 0, -1)
    ycc = cv2.cvtColor(roi, cv2.COLOR_BGR2YCrCb)
    # the classic skin cluster of Chai & Ngan (1999), widened a little for shadows and make-up
    colour = cv2.inRange(ycc, (0, 128, 70), (255, 180, 135))
    m = cv2.bitwise_and(geo, colour)
    # a wide feather: a hard mask edge shows as a seam where whitening stops
    k = max(3, int(bw * 0.15) | 1)
    return cv2.GaussianBlur(m, (k, k), 0).astype(np.float32) / 255.0


def smooth_skin(roi: np.ndarray, mask: np.ndarray, strength: float, work_size: int = 96) -> np.ndarray:
    """The ROI with skin smoothed: bilateral filter at reduced resolution, upsampled, blended through the mask."""
    import cv2

    if strength <= 0:
        return roi
    h, w = roi.shape[:2]
    f = min(1.0, work_size / max(h, w))
    small = cv2.resize(roi, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
    d = max(3, int(round(work_size / 16)) | 1)
    sm = cv2.bilateralFilter(small, d, 30 + 40 * strength, d)
    up = cv2.resize(sm, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    a = (mask * min(1.0, strength * 0.9))[..., None]
    return np.clip(roi.astype(np.float32) * (1 - a) + up * a, 0, 255).astype(np.uint8)


_LUT: dict[int, np.ndarray] = {}


def whiten(roi: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """Brighten skin with a log curve v' = log(v (b - 1) + 1) / log(b), blended through the mask."""
    import cv2

    if strength <= 0:
        return roi
    b = 2 + int(round(strength * 4))  # curve steepness 2..6
    if b not in _LUT:
        v = np.arange(256) / 255.0
        _LUT[b] = np.clip(np.log(v * (b - 1) + 1) / np.log(b) * 255, 0, 255).astype(np.uint8)
    bright = cv2.LUT(roi, _LUT[b]).astype(np.float32)
    a = (mask * strength)[..., None]
    return np.clip(roi.astype(np.float32) * (1 - a) + bright * a, 0, 255).astype(np.uint8)


def warp_maps(size: tuple[int, int], landmarks: np.ndarray, box: Sequence[float], origin: tuple[int, int],
              slim: float, eyes: float) -> tuple[np.ndarray, np.ndarray] | None:
    """`cv2.remap` maps (float32, ROI-sized) for cheek slimming and eye enlarging, or None when both are 0.

    Local translation warp (slimming): inside a circle of radius r around c, a pixel at x samples from
    x - ((r^2 - |x-c|^2) / (r^2 - |x-c|^2 + |m-c|^2))^2 (m - c), which pulls content towards m and is the
    identity on and outside the circle. Local scaling warp (eyes): inside radius r, x samples from
    c + (x - c) (1 - a (1 - |x-c|^2 / r^2)), magnifying the centre and identity at the rim.
    """
    if slim <= 0 and eyes <= 0:
        return None
    h, w = size
    ox, oy = origin
    lm = np.asarray(landmarks, np.float32) - np.float32((ox, oy))
    bx, by, bw, bh = (float(v) for v in box)
    bx, by = bx - ox, by - oy
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = gx.copy(), gy.copy()
    nose = lm[2]
    eye_d = float(np.hypot(*(lm[1] - lm[0])))
    if slim > 0:
        mouth_y = float((lm[3, 1] + lm[4, 1]) / 2)
        cy = (nose[1] + mouth_y) / 2 + 0.1 * bh
        r = 0.32 * bw
        for cx in (bx + 0.12 * bw, bx + 0.88 * bw):  # the two cheeks, near the jaw line
            c = np.float32((cx, cy))
            m = c + (nose - c) * np.float32(0.15 * slim)  # target point: towards the nose
            _translate(mx, my, gx, gy, c, m, r)
    if eyes > 0:
        r = 0.45 * eye_d
        for c in lm[:2]:
            _scale(mx, my, gx, gy, c, r, 0.35 * eyes)
    return mx, my


def _window(gx, gy, c, r):
    """The square of radius `r` around `c` clipped to the map: (slices, dx, dy, squared distance), or None."""
    x0, x1 = int(max(0, c[0] - r)), int(min(gx.shape[1], c[0] + r + 1))
    y0, y1 = int(max(0, c[1] - r)), int(min(gx.shape[0], c[1] + r + 1))
    if x0 >= x1 or y0 >= y1:
        return None
    win = (slice(y0, y1), slice(x0, x1))
    dx, dy = gx[win] - c[0], gy[win] - c[1]
    return win, dx, dy, dx * dx + dy * dy


def _translate(mx, my, gx, gy, c, m, r) -> None:
    w = _window(gx, gy, c, r)
    if w is None:
        return
    (ys, xs), dx, dy, d2 = w
    y0, y1, x0, x1 = ys.start, ys.stop, xs.start, xs.stop
    r2 = np.float32(r * r)
    mc = m - c
    mc2 = np.float32(mc @ mc)
    inside = d2 < r2
    ratio = np.where(inside, (r2 - d2) / (r2 - d2 + mc2), 0).astype(np.float32) ** 2
    mx[y0:y1, x0:x1] -= ratio * mc[0]
    my[y0:y1, x0:x1] -= ratio * mc[1]


def _scale(mx, my, gx, gy, c, r, a) -> None:
    w = _window(gx, gy, c, r)
    if w is None:
        return
    (ys, xs), dx, dy, d2 = w
    y0, y1, x0, x1 = ys.start, ys.stop, xs.start, xs.stop
    k = np.where(d2 < r * r, 1 - a * (1 - d2 / (r * r)), 1).astype(np.float32)
    mx[y0:y1, x0:x1] = np.where(d2 < r * r, c[0] + dx * k, mx[y0:y1, x0:x1])
    my[y0:y1, x0:x1] = np.where(d2 < r * r, c[1] + dy * k, my[y0:y1, x0:x1])


def apply_warps(roi: np.ndarray, maps: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    import cv2

    if maps is None:
        return roi
    return cv2.remap(roi, maps[0], maps[1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class Beautifier:
    """Beautify images (`apply`) or a stream of frames (`frame`, with tracking) using a `YunetDetector`."""

    def __init__(self, detector: Any, config: BeautyConfig = BeautyConfig()) -> None:
        config.validate()
        self.detector, self.config = detector, config
        self.reset()

    def reset(self) -> None:
        """Forget the tracked face (a new video)."""
        self._track: tuple[np.ndarray, np.ndarray] | None = None  # (box, landmarks), smoothed
        self._thumb: np.ndarray | None = None
        self._since = 0
        self.detections = 0

    def render(self, img: np.ndarray, faces: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """A copy of `img` with each (box, landmarks) face beautified inside its ROI only."""
        c = self.config
        out = img.copy()
        for box, lm in faces:
            x1, y1, x2, y2 = roi_of(box, img.shape, c.roi_scale)
            if x2 - x1 < 8 or y2 - y1 < 8:
                continue
            roi = out[y1:y2, x1:x2]
            mask = skin_mask(roi, box, lm, (x1, y1))
            r = smooth_skin(roi, mask, c.smooth, c.work_size)
            r = whiten(r, mask, c.whiten)
            r = apply_warps(r, warp_maps(r.shape[:2], lm, box, (x1, y1), c.slim, c.eyes))
            out[y1:y2, x1:x2] = r
        return out

    def apply(self, img: np.ndarray) -> tuple[np.ndarray, int]:
        """(beautified image, number of faces found); every detected face is processed."""
        faces = self.detector.detect(img)
        return self.render(img, [(f.box, f.landmarks) for f in faces]), len(faces)

    def _detect_small(self, frame: np.ndarray):
        import cv2

        h, w = frame.shape[:2]
        f = min(1.0, self.config.detect_width / w)
        small = cv2.resize(frame, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA) if f < 1 else frame
        self.detections += 1
        faces = self.detector.detect(small)
        if not faces:
            return None
        best = max(faces, key=lambda q: q.box[2] * q.box[3])  # the main (largest) face
        return best.box / f, best.landmarks / f

    def _patch(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        """The face box's gray patch at a fixed 64x64 (float32) and the pixels per patch pixel."""
        import cv2

        x, y, w, h = (float(v) for v in box)
        side = max(w, h)
        cx, cy = x + w / 2, y + h / 2
        # a fixed-size window about the box centre (border-replicated), so two frames compare like for like
        m = np.float32([[64 / side, 0, 32 - cx * 64 / side], [0, 64 / side, 32 - cy * 64 / side]])
        g = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        return cv2.warpAffine(g, m, (64, 64), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE).astype(np.float32), side / 64

    def frame(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        """One video frame: (beautified frame, whether a face was processed). Tracks the main face.

        Between detections the face's shift is measured by phase correlation of its gray patch with the previous
        frame's (sub-pixel, ~0.1 ms at 64x64) and applied to the box and landmarks; the detector runs again when the
        match is weak (`motion_threshold`: mean abs difference of the shifted patches, 0..255) or every
        `redetect_every` frames.
        """
        import cv2

        c = self.config
        need = self._track is None or self._since >= c.redetect_every
        if not need:
            box, lm = self._track
            win = self._window
            for _ in range(2):  # a second pass on the re-cut patch removes most of the window's underestimate
                cur, px = self._patch(frame, box)
                (dx, dy), _ = cv2.phaseCorrelate(self._thumb * win, cur * win)
                box = box + np.array([dx * px, dy * px, 0, 0])
                lm = lm + np.array([dx * px, dy * px])
            moved, _ = self._patch(frame, box)
            need = float(np.mean(np.abs(moved - self._thumb))) > c.motion_threshold
            if not need:
                self._track, self._thumb = (box, lm), moved
        if need:
            found = self._detect_small(frame)
            self._since = 0
            if found is None:
                self._track, self._thumb = None, None
                return frame, False
            box, lm = found
            if self._track is not None:  # smooth against jitter: the detector's boxes move by a pixel or two
                box = c.ema * box + (1 - c.ema) * self._track[0]
                lm = c.ema * lm + (1 - c.ema) * self._track[1]
            self._track = (box, lm)
            self._thumb = self._patch(frame, box)[0]
        self._since += 1
        return self.render(frame, [self._track]), True

    @property
    def _window(self) -> np.ndarray:
        import cv2

        if not hasattr(self, "_hann"):
            self._hann = cv2.createHanningWindow((64, 64), cv2.CV_32F)
        return self._hann


def side_by_side(before: np.ndarray, after: np.ndarray, max_width: int = 1600) -> np.ndarray:
    """Before | after in one image (scaled down to `max_width`), with labels."""
    import cv2

    pic = np.concatenate([before, after], axis=1)
    if pic.shape[1] > max_width:
        f = max_width / pic.shape[1]
        pic = cv2.resize(pic, (max_width, int(pic.shape[0] * f)), interpolation=cv2.INTER_AREA)
    t = max(1, pic.shape[1] // 800)
    for text, x in (("before", 10), ("after", pic.shape[1] // 2 + 10)):
        cv2.putText(pic, text, (x, 30 * t), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * t, (255, 255, 255), 2 * t)
    return pic


@dataclass
class VideoStats:
    """What a video run did: frames, frames with a face, detector runs, and the processing time (decode and
    encode excluded) and the wall time of the whole run."""

    frames: int = 0
    frames_with_face: int = 0
    detections: int = 0
    process_s: float = 0.0
    total_s: float = 0.0
    width: int = 0
    height: int = 0
    preview_frame: int | None = field(default=None)

    @property
    def fps(self) -> float:
        return self.frames / self.process_s if self.process_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {"frames": self.frames, "frames_with_face": self.frames_with_face, "detections": self.detections,
                "process_fps": round(self.fps, 1), "process_s": round(self.process_s, 3),
                "total_s": round(self.total_s, 3), "size": [self.width, self.height]}


def open_video(path: Path):
    """An opened cv2.VideoCapture and its first frame; a file that does not decode is a `DataError`."""
    # ffmpeg logs its own decode errors on stderr ("moov atom not found"); the DataError below says it in one line
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok or first is None:
        cap.release()
        raise DataError(f"{path}: cannot decode the video (not a video, truncated, or a codec OpenCV's ffmpeg lacks). "
                        "Re-encode it as H.264 or MPEG-4 .mp4.")
    return cap, first


def beautify_video(beauty: Beautifier, src: Path, dst_tmp: Path, *, preview: Callable[[np.ndarray, np.ndarray], None] | None = None,
                   max_frames: int | None = None) -> VideoStats:
    """Read `src`, beautify each frame with tracking, write MPEG-4 to `dst_tmp` (the caller renames it into place).
    `preview(before, after)` is called once, for the first frame with a face."""
    import cv2

    cap, frame = open_video(src)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(dst_tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps if fps > 0 else 25.0, (w, h))
    if not writer.isOpened():
        cap.release()
        raise DataError(f"{dst_tmp}: OpenCV cannot write MPEG-4 video here. Pass an output path ending in .mp4.")
    st = VideoStats(width=w, height=h)
    beauty.reset()
    t_all = time.perf_counter()
    try:
        while frame is not None:
            t0 = time.perf_counter()
            out, had = beauty.frame(frame)
            st.process_s += time.perf_counter() - t0
            if had and preview is not None and st.preview_frame is None:
                preview(frame, out)
                st.preview_frame = st.frames
            st.frames += 1
            st.frames_with_face += int(had)
            writer.write(out)
            if max_frames is not None and st.frames >= max_frames:
                break
            ok, frame = cap.read()
            if not ok:
                frame = None
    finally:
        cap.release()
        writer.release()
    st.detections = beauty.detections
    st.total_s = time.perf_counter() - t_all
    if st.frames == 0 or not os.path.exists(dst_tmp):
        raise DataError(f"{src}: no frame could be processed. Check the video.")
    return st
