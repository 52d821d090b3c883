"""The Objectron chair model on LiteRT (ai-edge-litert): image in, 3D boxes out.

The model (MediaPipe's single-stage Objectron for chairs, full-integer int8) takes one 640x480 (portrait) RGB image
scaled to [-1, 1] (its input quantization, scale 2/255 and zero point -1, spans exactly that) and returns a 40x30
belief map, 40x30x16 vertex displacements and a 160x120x4 map this app does not use. Its belief output is the last
convolution's raw output (int8 range about [-18, 4]; there is no logistic op in the graph), so a sigmoid turns it
into the [0, 1] belief MediaPipe's decoder thresholds. Images of another size are fitted into 480x640 keeping their
aspect ratio and centred on black, as MediaPipe's FIT scaling does; keypoints are mapped back to the image's pixels.

>>> det = ObjectronDetector.from_zoo(local_dir="models")            # doctest: +SKIP
>>> boxes = det.detect(cv2.imread("chair.jpg"))                      # doctest: +SKIP
>>> boxes[0].score, boxes[0].pose.rotation, boxes[0].pose.projected  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import DataError, ModelLoadError
from .decode import DecodeConfig, decode
from .lift import BOX_EDGES, BoxPose, camera_matrix, lift_box

__all__ = ["ObjectronConfig", "Box3D", "Fit", "ObjectronDetector", "fit_image", "draw_boxes", "DEFAULT_MODEL"]

DEFAULT_MODEL = "objectron-chair"


@dataclass(frozen=True, kw_only=True)
class ObjectronConfig:
    decode: DecodeConfig = DecodeConfig()
    fov_deg: float = 65.0  # the assumed camera's field of view along the image's longer side

    def validate(self) -> None:
        self.decode.validate()
        camera_matrix(1, 1, self.fov_deg)  # raises on a bad field of view


@dataclass(frozen=True)
class Fit:
    """How an image was fitted into the model's input: input = image * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float


@dataclass(frozen=True)
class Box3D:
    """One detected object: its belief, the 9 keypoints the network predicted and the 3D box fitted to them."""

    score: float
    keypoints: np.ndarray = field(repr=False)  # (9, 2) image pixels: centre + 8 vertices as decoded
    pose: BoxPose = field(repr=False)  # rotation, translation, dimensions (up to scale); pose.projected in pixels

    def to_dict(self) -> dict:
        return {"score": round(self.score, 4), "keypoints": np.round(self.keypoints, 2).tolist(), **self.pose.to_dict()}


def fit_image(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Fit]:
    """A BGR uint8 image as the model's NHWC float32 RGB input in [-1, 1], fitted into `size` (h, w)."""
    import cv2

    h, w = img.shape[:2]
    th, tw = size
    s = min(tw / w, th / h)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    resized = img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    px, py = (tw - nw) // 2, (th - nh) // 2
    x = np.full((1, th, tw, 3), -1.0, np.float32)  # black padding
    dst = x[0, py:py + nh, px:px + nw]
    # written in place: the obvious `rgb * (1 / 127.5) - 1` makes two full-size temporaries, ~30x slower here
    np.multiply(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), np.float32(1 / 127.5), out=dst, casting="unsafe")
    dst -= 1.0
    return x, Fit(scale=nw / w, pad_x=float(px), pad_y=float(py))


class ObjectronDetector:
    """A LiteRT interpreter holding the Objectron model, plus decode and lift."""

    def __init__(self, interpreter: Any, *, config: ObjectronConfig = ObjectronConfig()) -> None:
        config.validate()
        self.interpreter, self.config = interpreter, config
        inp = interpreter.get_input_details()
        outs = interpreter.get_output_details()
        shape = [int(v) for v in inp[0]["shape"]] if len(inp) == 1 else []
        by_channels = {int(o["shape"][-1]): o for o in outs if len(o["shape"]) == 4}
        if len(shape) != 4 or shape[3] != 3 or 1 not in by_channels or 16 not in by_channels:
            raise ModelLoadError(f"the model's tensors (input {shape}, outputs {[list(o['shape']) for o in outs]}) are not "
                                 "Objectron's: expected one NHWC RGB input, a 1-channel belief map and 16 displacement "
                                 "channels. Pass MediaPipe's single-stage Objectron .tflite.")
        self.input_index = inp[0]["index"]
        self.input_size = (shape[1], shape[2])  # (h, w)
        self.belief_index, self.offsets_index = by_channels[1]["index"], by_channels[16]["index"]

    @classmethod
    def from_model(cls, path: str | Path, *, threads: int = 2, config: ObjectronConfig = ObjectronConfig()) -> "ObjectronDetector":
        """Load a .tflite file on LiteRT's CPU interpreter with `threads` threads."""
        from ai_edge_litert.interpreter import Interpreter

        p = Path(path)
        if not p.is_file():
            raise ModelLoadError(f"{p}: model file not found. Pass MediaPipe's Objectron .tflite or a --models folder holding it.")
        try:
            it = Interpreter(model_path=str(p), num_threads=threads)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{p}: LiteRT cannot load it ({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
                                 "Pass a .tflite model file.") from None
        return cls(it, config=config)

    @classmethod
    def from_zoo(cls, name: str = DEFAULT_MODEL, *, local_dir: str | Path | None = None, threads: int = 2,
                 config: ObjectronConfig = ObjectronConfig()) -> "ObjectronDetector":
        """The zoo's Objectron model, read from `local_dir`, the cache, or fetched by URL + sha256."""
        from ...zoo import resolve

        return cls.from_model(resolve(name, local_dir=local_dir), threads=threads, config=config)

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for one prepared input: the belief logits (H, W) and displacements (H, W, 16)."""
        it = self.interpreter
        it.set_tensor(self.input_index, x)
        it.invoke()
        return it.get_tensor(self.belief_index)[0, :, :, 0].copy(), it.get_tensor(self.offsets_index)[0].copy()

    def detect(self, img: np.ndarray) -> list[Box3D]:
        """Objects in a BGR uint8 image, strongest first, keypoints in the image's pixels."""
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DataError(f"expected a BGR uint8 image (H, W, 3), got {getattr(img, 'shape', type(img))}. "
                            "Read it with cv2.imread.")
        x, fit = fit_image(img, self.input_size)
        logits, offsets = self.infer(x)
        belief = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        h, w = self.input_size
        K = camera_matrix(img.shape[1], img.shape[0], self.config.fov_deg)
        out = []
        for kp in decode(belief, offsets, self.config.decode):
            px = (kp.points * np.array([w, h]) - np.array([fit.pad_x, fit.pad_y])) / fit.scale
            out.append(Box3D(score=kp.score, keypoints=px, pose=lift_box(px, K)))
        return out


def draw_boxes(img: np.ndarray, boxes: Sequence[Box3D]) -> np.ndarray:
    """A copy of `img` with each box's 12 edges (projected from its 3D fit), centre and score drawn; edges along the
    box's x, y and z axes in red, green and blue."""
    import cv2

    out = img.copy()
    t = max(1, int(round(max(img.shape[:2]) / 400)))
    colours = [(0, 0, 255)] * 4 + [(0, 200, 0)] * 4 + [(255, 0, 0)] * 4
    for b in boxes:
        p = np.round(b.pose.projected).astype(int)
        for (i, j), c in zip(BOX_EDGES, colours):
            cv2.line(out, tuple(p[i]), tuple(p[j]), c, t, cv2.LINE_AA)
        cv2.circle(out, tuple(p[0]), t + 2, (0, 255, 255), -1)
        top = p[1:, 1].min()
        x0 = p[1:, 0].min()
        cv2.putText(out, f"{b.score:.2f}", (int(x0), int(max(10, top - 4))), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * t,
                    (0, 0, 255), t, cv2.LINE_AA)
    return out
