"""HyperFAS silent face anti-spoofing, ported from its Keras 2.2.4 HDF5 file to ONNX.

The released model (zeusees/HyperFAS `model/fas.h5`) is a MobileNet-0.5-style network: a 3x3/2 convolution, 13
depthwise-separable blocks (BatchNorm + ReLU after each convolution), a 1x1 convolution to 64 channels, Flatten
(4x4x64 = 1024, in Keras' NHWC order) and Dense(1, sigmoid). Input: a 224x224 BGR face crop (as cv2 reads it)
scaled to (x - 127.5) / 127.5; the crop is a square of 1.2x the detector box's longer side around its centre,
clipped to the image; "real" when the score exceeds 0.95 (the values of the project's demo).

Current Keras/TensorFlow cannot load a Keras 2.2.4 file without the old stack, so the graph is rebuilt here from the
file itself: `read_h5` takes the layer list from the `model_config` attribute and the weights from `model_weights`
with h5py, `build_onnx` writes the equivalent ONNX graph with `onnx.helper` (NCHW; "same" padding written as the
explicit, bottom/right-heavy pads TensorFlow uses; a Transpose to NHWC before Flatten keeps Keras' weight order), and
`numpy_forward` is an independent NumPy implementation of the same layers in NHWC, the reference the ONNX port is
checked against.

>>> fas = AntiSpoof.from_zoo(local_dir="models")                    # doctest: +SKIP
>>> fas.score_faces(img, faces)[0].real                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ModelLoadError

__all__ = ["Layer", "read_h5", "build_onnx", "numpy_forward", "preprocess", "crop_face", "AntiSpoof", "SpoofResult",
           "INPUT_SIZE", "REAL_THRESHOLD", "CROP_RATIO"]

INPUT_SIZE = 224
REAL_THRESHOLD = 0.95
CROP_RATIO = 1.2
_SUPPORTED = {"InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "Activation", "Flatten", "Dense", "ReLU"}


@dataclass
class Layer:
    """One Keras layer: its class, config and weights (Keras' own layouts: HWIO kernels, HW C 1 depthwise)."""

    kind: str
    name: str
    config: dict
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def read_h5(path: str | Path) -> list[Layer]:
    """The layers of a sequential Keras HDF5 model, in order, with their weights."""
    import h5py

    p = Path(path)
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise ModelLoadError(f"{p}: not an HDF5 file. Pass HyperFAS' fas.h5 (Keras 2.2.4).") from None
    with f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise ModelLoadError(f"{p}: an HDF5 file without a Keras model (no model_config / model_weights). "
                                 "Pass a full Keras model file, saved with model.save().")
        cfg = json.loads(f.attrs["model_config"])
        layers_cfg = cfg["config"]["layers"] if isinstance(cfg["config"], dict) else cfg["config"]
        out = []
        prev = None
        for lc in layers_cfg:
            kind, name = lc["class_name"], lc["config"]["name"]
            if kind not in _SUPPORTED:
                raise ModelLoadError(f"{p}: layer {name!r} is a {kind}, which this port does not implement "
                                     f"(supported: {', '.join(sorted(_SUPPORTED))}).")
            inbound = lc.get("inbound_nodes") or []
            if inbound and prev is not None:
                srcs = [n[0] for n in inbound[0]]
                if srcs != [prev]:
                    raise ModelLoadError(f"{p}: layer {name!r} reads {srcs}, not the layer before it; only a chain of "
                                         "layers is supported.")
            w = {}
            if name in f["model_weights"]:
                g = f["model_weights"][name]
                for wn in g.attrs.get("weight_names", []):
                    wn = wn.decode() if isinstance(wn, bytes) else str(wn)
                    w[wn.split("/")[-1].split(":")[0]] = np.asarray(g[wn], np.float32)
            out.append(Layer(kind, name, dict(lc["config"]), w))
            prev = name
    return out


def _same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TensorFlow "same": output ceil(size / s); the odd pad pixel goes after (bottom/right)."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _act(kind: str) -> str:
    if kind not in ("linear", "relu", "sigmoid"):
        raise ModelLoadError(f"activation {kind!r} is not implemented by the HyperFAS port (linear, relu, sigmoid).")
    return kind


def build_onnx(layers: Sequence[Layer], size: int = INPUT_SIZE) -> Any:
    """The equivalent ONNX model: input `input` 1x3xSxS (NCHW, BGR scaled to [-1, 1]), output `score` 1x1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    cur, h, w, c = "input", size, size, 3
    layout = "NCHW"

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def activation(kind: str, src: str, name: str) -> str:
        if kind == "linear":
            return src
        op = {"relu": "Relu", "sigmoid": "Sigmoid"}[kind]
        nodes.append(helper.make_node(op, [src], [name], name=name))
        return name

    for L in layers:
        cfg, n = L.config, L.name
        if L.kind == "InputLayer":
            continue
        if L.kind in ("Conv2D", "DepthwiseConv2D"):
            (kh, kw), (sh, sw) = cfg["kernel_size"], cfg["strides"]
            if cfg["padding"] == "same":
                oh, pt, pb = _same_pads(h, kh, sh)
                ow, pl, pr = _same_pads(w, kw, sw)
            else:
                oh, ow, pt, pb, pl, pr = (h - kh) // sh + 1, (w - kw) // sw + 1, 0, 0, 0, 0
            if L.kind == "Conv2D":
                k = L.weights["kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
                group, c_out = 1, k.shape[0]
            else:
                dk = L.weights["depthwise_kernel"]  # H W C M
                if dk.shape[3] != 1:
                    raise ModelLoadError(f"layer {n!r}: depth_multiplier {dk.shape[3]} is not implemented (1 is).")
                k = dk.transpose(2, 3, 0, 1)  # -> C 1 H W
                group, c_out = c, c
            ins = [cur, init(n + "_W", k)]
            if cfg.get("use_bias"):
                ins.append(init(n + "_B", L.weights["bias"]))
            nodes.append(helper.make_node("Conv", ins, [n], name=n, kernel_shape=[kh, kw], strides=[sh, sw],
                                          pads=[pt, pl, pb, pr], group=group))
            cur = activation(_act(cfg.get("activation", "linear")), n, n + "_act")
            h, w, c = oh, ow, c_out
        elif L.kind == "BatchNormalization":
            W = L.weights
            ins = [cur, init(n + "_gamma", W.get("gamma", np.ones(c, np.float32))),
                   init(n + "_beta", W.get("beta", np.zeros(c, np.float32))),
                   init(n + "_mean", W["moving_mean"]), init(n + "_var", W["moving_variance"])]
            nodes.append(helper.make_node("BatchNormalization", ins, [n], name=n, epsilon=float(cfg["epsilon"])))
            cur = n
        elif L.kind in ("Activation", "ReLU"):
            kind = "relu" if L.kind == "ReLU" else _act(cfg["activation"])
            cur = activation(kind, cur, n)
        elif L.kind == "Flatten":
            # Keras flattens NHWC: go to that order first so the Dense weights apply unchanged
            nodes.append(helper.make_node("Transpose", [cur], [n + "_nhwc"], name=n + "_nhwc", perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Flatten", [n + "_nhwc"], [n], name=n, axis=1))
            cur, layout = n, "flat"
            c = h * w * c
        elif L.kind == "Dense":
            if layout != "flat":
                raise ModelLoadError(f"layer {n!r}: Dense before Flatten is not implemented.")
            ins = [cur, init(n + "_W", L.weights["kernel"].T)]
            ins.append(init(n + "_B", L.weights["bias"] if cfg.get("use_bias", True) else np.zeros(cfg["units"], np.float32)))
            nodes.append(helper.make_node("Gemm", ins, [n], name=n, transB=1))
            cur = activation(_act(cfg.get("activation", "linear")), n, n + "_act")
            c = int(cfg["units"])
    nodes.append(helper.make_node("Identity", [cur], ["score"], name="score"))
    graph = helper.make_graph(nodes, "hyperfas", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, c])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgeslim")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ---- the NumPy reference ---------------------------------------------------------------------------------------

def _pad_same(x: np.ndarray, k: tuple[int, int], s: tuple[int, int]) -> np.ndarray:
    _, pt, pb = _same_pads(x.shape[1], k[0], s[0])
    _, pl, pr = _same_pads(x.shape[2], k[1], s[1])
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], oh: int, ow: int):
    for i in range(k[0]):
        for j in range(k[1]):
            yield i, j, x[:, i: i + s[0] * (oh - 1) + 1: s[0], j: j + s[1] * (ow - 1) + 1: s[1], :]


def numpy_forward(layers: Sequence[Layer], x: np.ndarray) -> np.ndarray:
    """The Keras model's output for NHWC float input `x`, computed layer by layer in float64 NumPy (no ONNX)."""
    y = np.asarray(x, np.float64)
    for L in layers:
        cfg = L.config
        if L.kind in ("Conv2D", "DepthwiseConv2D"):
            k, s = tuple(cfg["kernel_size"]), tuple(cfg["strides"])
            if cfg["padding"] == "same":
                oh, ow = math.ceil(y.shape[1] / s[0]), math.ceil(y.shape[2] / s[1])
                y = _pad_same(y, k, s)
            else:
                oh, ow = (y.shape[1] - k[0]) // s[0] + 1, (y.shape[2] - k[1]) // s[1] + 1
            if L.kind == "Conv2D":
                W = L.weights["kernel"].astype(np.float64)  # H W I O
                out = np.zeros((y.shape[0], oh, ow, W.shape[3]))
                for i, j, win in _windows(y, k, s, oh, ow):
                    out += win @ W[i, j]
            else:
                W = L.weights["depthwise_kernel"].astype(np.float64)[..., 0]  # H W C
                out = np.zeros((y.shape[0], oh, ow, y.shape[3]))
                for i, j, win in _windows(y, k, s, oh, ow):
                    out += win * W[i, j]
            if cfg.get("use_bias"):
                out += L.weights["bias"]
            y = _np_act(out, cfg.get("activation", "linear"))
        elif L.kind == "BatchNormalization":
            W = {k: v.astype(np.float64) for k, v in L.weights.items()}
            gamma = W.get("gamma", np.ones(y.shape[-1]))
            beta = W.get("beta", np.zeros(y.shape[-1]))
            y = (y - W["moving_mean"]) / np.sqrt(W["moving_variance"] + cfg["epsilon"]) * gamma + beta
        elif L.kind in ("Activation", "ReLU"):
            y = _np_act(y, "relu" if L.kind == "ReLU" else cfg["activation"])
        elif L.kind == "Flatten":
            y = y.reshape(y.shape[0], -1)
        elif L.kind == "Dense":
            y = y @ L.weights["kernel"].astype(np.float64)
            if cfg.get("use_bias", True):
                y = y + L.weights["bias"]
            y = _np_act(y, cfg.get("activation", "linear"))
    return y


def _np_act(y: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu":
        return np.maximum(y, 0)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if kind == "linear":
        return y
    raise ModelLoadError(f"activation {kind!r} is not implemented by the HyperFAS port (linear, relu, sigmoid).")


# ---- the pipeline ----------------------------------------------------------------------------------------------

def crop_face(img: np.ndarray, box: Sequence[float], ratio: float = CROP_RATIO) -> np.ndarray:
    """The square crop HyperFAS scores: side `ratio` x the box's longer side, centred on the box, clipped to the
    image (so a face at the border gives a non-square crop, stretched by the resize as in the original demo)."""
    x, y, w, h = (float(v) for v in box)
    r = max(w, h) * ratio / 2
    cx, cy = x + w / 2, y + h / 2
    H, W = img.shape[:2]
    x1, y1 = int(max(cx - r, 0)), int(max(cy - r, 0))
    x2, y2 = int(min(cx + r, W)), int(min(cy + r, H))
    if x2 - x1 < 2 or y2 - y1 < 2:
        x1, y1, x2, y2 = max(0, min(x1, W - 2)), max(0, min(y1, H - 2)), min(W, max(x2, x1 + 2)), min(H, max(y2, y1 + 2))
    return img[y1:y2, x1:x2]


def preprocess(crop: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """NHWC float32 1xSxSx3: the BGR crop resized (bilinear) and scaled to [-1, 1]."""
    import cv2

    x = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return ((x - 127.5) / 127.5)[None]


@dataclass(frozen=True)
class SpoofResult:
    """One face's anti-spoofing score (probability of a live face) and verdict at the threshold."""

    box: tuple[float, float, float, float]
    score: float
    real: bool

    def to_dict(self) -> dict:
        return {"box": [round(v, 2) for v in self.box], "score": round(self.score, 6), "real": self.real}


class AntiSpoof:
    """HyperFAS on onnxruntime: `score(crop)` for one face crop, `score_faces(img, faces)` for detections."""

    def __init__(self, model: Any, *, threads: int = 2, threshold: float = REAL_THRESHOLD) -> None:
        from ...engines import get_engine

        self.model = model
        self.threshold = threshold
        self.runner = get_engine("ort").load(model.SerializeToString(), threads)

    @classmethod
    def from_h5(cls, path: str | Path, *, threads: int = 2, threshold: float = REAL_THRESHOLD) -> "AntiSpoof":
        return cls(build_onnx(read_h5(path)), threads=threads, threshold=threshold)

    @classmethod
    def from_zoo(cls, name: str = "hyperfas", *, local_dir: str | Path | None = None, threads: int = 2,
                 threshold: float = REAL_THRESHOLD) -> "AntiSpoof":
        """HyperFAS fetched by URL + sha256 into the cache, or read from `local_dir`."""
        from ...zoo import resolve

        return cls.from_h5(resolve(name, local_dir=local_dir), threads=threads, threshold=threshold)

    def score_input(self, x_nhwc: np.ndarray) -> float:
        """The model's score for a preprocessed NHWC input (see `preprocess`)."""
        feed = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2), np.float32)
        return float(self.runner.run({"input": feed})[0].ravel()[0])

    def score(self, crop: np.ndarray) -> float:
        return self.score_input(preprocess(crop))

    def score_faces(self, img: np.ndarray, faces: Sequence[Any]) -> list[SpoofResult]:
        """One result per detected face (objects with a `box` x, y, w, h), in the same order."""
        out = []
        for f in faces:
            s = self.score(crop_face(img, f.box))
            out.append(SpoofResult(tuple(float(v) for v in f.box), s, s > self.threshold))
        return out
