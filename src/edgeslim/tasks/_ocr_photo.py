"""Whole-photo OCR pre-processing shared by the `ocr-det`/`ocr-cls` tasks and the `edgeslim ocr` app: image loading
with size limits, the detector's resize policy, and the detector's and angle classifier's input tensors (PP-OCR's
normalisation). Pure functions over arrays: the app and the tasks both build on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InvalidParameterError

__all__ = ["DetResize", "parse_det_limit", "load_image", "det_input", "cls_input", "MIN_IMAGE_SIDE", "MAX_IMAGE_SIDE"]

# Smaller than this holds no readable line; larger than this costs gigabytes in the detector and crops (a
# 20000 px panorama at the detector's resolution is a 3 GB float map): both are refused with a hint.
MIN_IMAGE_SIDE = 8
MAX_IMAGE_SIDE = 10000
# Images flatter than this (or this short) are padded above and below before detection (PP-OCR's letterbox): the
# detector is trained on photos, and a 1:20 strip resized for it would leave text a few pixels tall.
LETTERBOX_RATIO = 8
LETTERBOX_MIN_HEIGHT = 30


@dataclass(frozen=True, kw_only=True)
class DetResize:
    """How large the detector sees a photo. mode "max": longer side at most `limit` (never enlarged); "min":
    shorter side at least `limit` (never shrunk), longer side at most `max_side`. Sides round to multiples of 32."""

    limit: int = 960
    mode: str = "max"
    max_side: int = 2000

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise InvalidParameterError(f"det resize mode {self.mode!r} is not max or min. Use e.g. --det-limit 960 "
                                        "(longer side at most 960) or --det-limit min:736.")
        if not 32 <= int(self.limit) <= 8192:
            raise InvalidParameterError(f"--det-limit {self.limit} is outside 32..8192 px. Use e.g. 960.")

    def size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) fed to the detector for an h x w image."""
        if self.mode == "max":
            ratio = min(1.0, self.limit / max(h, w))
        else:
            ratio = max(1.0, self.limit / min(h, w))
            ratio = min(ratio, self.max_side / max(h, w)) if max(h, w) * ratio > self.max_side else ratio
        rh, rw = int(h * ratio), int(w * ratio)
        return max(32, int(round(rh / 32) * 32)), max(32, int(round(rw / 32) * 32))

    def spec(self) -> str:
        return f"{self.mode}:{self.limit}"


def parse_det_limit(text: str | int) -> DetResize:
    """`960` or `max:960` (longer side at most 960), `min:736` (shorter side at least 736, RapidOCR's policy)."""
    s = str(text).strip().lower()
    mode, _, num = s.rpartition(":")
    mode = mode or "max"
    try:
        limit = int(num)
    except ValueError:
        raise InvalidParameterError(f"--det-limit {text!r} is not a size. Write 960, max:960 or min:736.") from None
    return DetResize(limit=limit, mode=mode)


def load_image(src: str | Path | np.ndarray, name: str = "") -> tuple[np.ndarray, str]:
    """A BGR uint8 image and its name, from a path or an array (gray and BGRA are converted). Images outside
    `MIN_IMAGE_SIDE`..`MAX_IMAGE_SIDE` px a side are a `DataError` naming the file."""
    from .base import as_bgr, read_image

    if isinstance(src, np.ndarray):
        name = name or "<array>"
        img = as_bgr(src, name)
    else:
        p = Path(src)
        name = name or str(p)
        if p.is_dir():
            raise DataError(f"{p} is a folder; load_image reads one image file. Use list_images() for folders.")
        img = read_image(p)
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise DataError(f"{name}: the image is {w}x{h} px, too small to hold readable text (each side needs at least "
                        f"{MIN_IMAGE_SIDE} px). Pass a photo or a scan.")
    if max(h, w) > MAX_IMAGE_SIDE:
        raise DataError(f"{name}: the image is {w}x{h} px; edgeslim ocr reads images up to {MAX_IMAGE_SIDE} px a side. "
                        "Downscale it or cut it into tiles first.")
    return img, name


def det_input(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    x = cv2.resize(img, (hw[1], hw[0])).astype(np.float32)
    x = (x * (1 / 255.0) - 0.5) / 0.5  # PP-OCR: BGR as decoded, mean 0.5, std 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def cls_input(crop: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    ch, cw = crop.shape[:2]
    rw = min(w, int(math.ceil(h * cw / ch)))
    x = cv2.resize(crop, (rw, h)).astype(np.float32).transpose(2, 0, 1) / 255.0
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = (x - 0.5) / 0.5
    return out
