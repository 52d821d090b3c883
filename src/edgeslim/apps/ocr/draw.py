"""Draw OCR results: the photo with each line's quad, and beside it the text at the same place.

Text is drawn with a CJK-capable font found on the system (Debian: `apt-get install fonts-wqy-zenhei` or
fonts-noto-cjk); without one, Latin text still draws and CJK characters show as boxes.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from .pipeline import OcrResult

__all__ = ["find_cjk_font", "draw_result"]

_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts"))
_CJK_KEYS = ("wqy", "notosanscjk", "notoserifcjk", "noto-cjk", "sourcehansans", "droidsansfallback", "zenhei", "microhei")


@lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """Path of a font that has CJK glyphs, or None: fontconfig's answer for Chinese, else a known file name."""
    if shutil.which("fc-match"):
        try:
            out = subprocess.run(["fc-match", "-f", "%{file}", ":lang=zh-cn"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
            if out and any(k in out.lower().replace(" ", "") for k in _CJK_KEYS):
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    for d in _FONT_DIRS:
        if Path(d).is_dir():
            for p in sorted(Path(d).rglob("*")):
                if p.suffix.lower() in (".ttf", ".ttc", ".otf") and any(k in p.name.lower() for k in _CJK_KEYS):
                    return str(p)
    return None


def _font(size: int):
    from PIL import ImageFont

    path = find_cjk_font()
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def draw_result(image: np.ndarray, result: OcrResult) -> np.ndarray:
    """A BGR image twice as wide as `image`: left the photo with coloured quads, right each line's text inside the
    same quad's place on white, so a reader compares box and text at a glance."""
    import cv2
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    left = image.copy()
    right = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(right)
    rng = np.random.default_rng(0)
    for line in result.lines:
        color = tuple(int(c) for c in rng.integers(0, 200, 3))
        q = np.asarray(line.quad, np.int32)
        overlay = left.copy()
        cv2.fillPoly(overlay, [q], color[::-1])
        left = cv2.addWeighted(overlay, 0.25, left, 0.75, 0)
        cv2.polylines(left, [q], True, color[::-1], 2)
        d.polygon([tuple(p) for p in q.tolist()], outline=color)
        box_h = max(8, int(min(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2]))))
        size = max(8, min(box_h - 2, 48))
        font = _font(size)
        d.text((int(q[0][0]) + 2, int(q[0][1]) + 1), line.text, fill=(0, 0, 0), font=font)
    return np.hstack([left, cv2.cvtColor(np.asarray(right), cv2.COLOR_RGB2BGR)])
