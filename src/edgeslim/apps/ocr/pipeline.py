"""Whole-image OCR: detect text lines (DB), turn upside-down lines upright (angle classifier), read them (CTC).

    image -> resize for the detector -> DB probability map -> quads -> perspective crops
          -> angle classifier (batched) -> recognizer (lines batched by padded width) -> lines (quad, text, score)

The three models come from the zoo (PP-OCRv4 det, the PP-OCR mobile angle classifier, PP-OCRv4 rec: what
RapidOCR ships) or from a pipeline folder written by `edgeslim optimize ocr-pipeline` (`pipeline.json` naming one
deployment folder per stage, each with its own `deploy.json`, engine and precision).

Pre- and post-processing follow PaddleOCR's published parameters, so the same models read the same text as
PaddleOCR/RapidOCR (a parity test checks it). One choice is the user's: how large the detector sees the photo.
`DetResize(limit=960, mode="max")` (the default) shrinks photos whose longer side exceeds 960 px; `mode="min"`
enlarges photos whose shorter side is below `limit` (RapidOCR's policy: min 736, 2000 px at most), which costs
about twice the detector time on a 1280x720 photo and finds smaller text.

>>> ocr = OcrPipeline.load()                                              # doctest: +SKIP
>>> [(l.text, l.score) for l in ocr.read("photo.jpg").lines]              # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ...policy import ThreadPolicy
from ...errors import DataError
from ...tasks._ocr_db import DBConfig, db_boxes
from ...tasks._ocr_geometry import clip_quad, crop_quad, order_quad, reading_order
from ...tasks._ocr_photo import (LETTERBOX_MIN_HEIGHT, LETTERBOX_RATIO, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, DetResize, cls_input as _cls_input,
                                 det_input as _det_input, load_image, parse_det_limit)

__all__ = ["DetResize", "OcrConfig", "OcrLine", "OcrResult", "OcrModels", "OcrPipeline", "PIPELINE_FILE",
           "ZOO_MODELS", "IMAGE_SUFFIXES", "MIN_IMAGE_SIDE", "MAX_IMAGE_SIDE", "load_image", "list_images",
           "parse_det_limit", "ctc_decode_scored"]

PIPELINE_FILE = "pipeline.json"
ZOO_MODELS = {"det": "ppocrv4-det", "cls": "ppocr-cls", "rec": "ppocrv4-rec"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
@dataclass(frozen=True, kw_only=True)
class OcrConfig:
    """Pre/post-processing of the pipeline (PP-OCR's values unless noted)."""

    det_resize: DetResize = field(default_factory=DetResize)
    db: DBConfig = field(default_factory=DBConfig)
    use_cls: bool = True
    cls_thresh: float = 0.9  # a line is turned 180 degrees only when the classifier is this sure
    cls_height: int = 48
    cls_width: int = 192
    text_score: float = 0.5  # lines read with a lower mean character confidence are dropped (mostly non-text)
    cls_batch: int = 16
    rec_batch: int = 8  # lines per recognizer run; each batch holds lines of one padded width (multiple of 32)
    min_box_side: int = 3  # boxes thinner than this (image pixels) are dropped

    def to_dict(self) -> dict:
        return {"det_resize": self.det_resize.spec(), "det_max_side": self.det_resize.max_side,
                "db": self.db.__dict__.copy(), "use_cls": self.use_cls, "cls_thresh": self.cls_thresh,
                "cls_input": [3, self.cls_height, self.cls_width], "text_score": self.text_score,
                "cls_batch": self.cls_batch, "rec_batch": self.rec_batch, "min_box_side": self.min_box_side}


@dataclass
class OcrLine:
    """One text line: its quad in image pixels (top-left, top-right, bottom-right, bottom-left), the text, the
    recognizer's mean character confidence, the detector's box score, and whether it was read turned 180."""

    quad: list[list[int]]
    text: str
    score: float
    box_score: float = 0.0
    rotated_180: bool = False

    def to_dict(self) -> dict:
        return {"quad": self.quad, "text": self.text, "score": round(float(self.score), 4),
                "box_score": round(float(self.box_score), 4), "rotated_180": self.rotated_180}


@dataclass
class OcrResult:
    """Lines of one image in reading order, with the image size and per-stage seconds."""

    source: str
    width: int
    height: int
    lines: list[OcrLine]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"image": self.source, "width": self.width, "height": self.height,
                "lines": [l.to_dict() for l in self.lines], "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}

    @property
    def text(self) -> str:
        return "\n".join(l.text for l in self.lines)


# ---- images ----------------------------------------------------------------------------------------------------

def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from paths and folders (a folder's images in name order, not recursive). A missing path, a
    folder without images, or no input at all is a `DataError`."""
    out: list[Path] = []
    if not inputs:
        raise DataError("no image given. Pass image files or folders of images.")
    for s in inputs:
        p = Path(s)
        if not p.exists():
            raise DataError(f"{p}: not found. Pass an existing image file or folder.")
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)}). Pass a folder "
                                "holding photos, or the image files themselves.")
            out += found
        else:
            out.append(p)
    return out


# ---- models ----------------------------------------------------------------------------------------------------

def ctc_decode_scored(probs: np.ndarray, charset: Sequence[str]) -> list[tuple[str, float]]:
    """Best-path CTC per row with a confidence: the mean of the kept steps' maximum probability (0 for no text)."""
    idx = probs.argmax(axis=-1)
    best = probs.max(axis=-1)
    out = []
    for row, p in zip(idx, best):
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        kept = row[keep]
        if kept.size and int(kept.max()) >= len(charset):
            raise DataError(f"the recognizer outputs class {int(kept.max())} but the charset has {len(charset)} entries. "
                            "Use the model's own dictionary.")
        out.append(("".join(charset[i] for i in kept), float(p[keep].mean()) if keep.any() else 0.0))
    return out


@dataclass
class OcrModels:
    """The three runners and what feeding them needs; `describe` says where each came from."""

    det: Any
    cls: Any | None
    rec: Any
    det_input: str
    cls_input: str | None
    rec_task: Any  # an OcrRecTask (charset, height, widths) used to batch and feed the recognizer
    cls_labels: tuple[str, ...] = ("0", "180")
    describe: dict = field(default_factory=dict)

    @classmethod
    def from_zoo(cls, threads: int = 2, policy: str = ThreadPolicy.DEDICATED, names: dict[str, str] | None = None) -> "OcrModels":
        """The zoo's PP-OCR models on onnxruntime fp32."""
        import onnx

        from ...engines import get_engine
        from ...tasks.ocr_rec import OcrRecTask
        from ...zoo import resolve

        names = {**ZOO_MODELS, **(names or {})}
        paths = {k: resolve(v) for k, v in names.items()}
        ort = get_engine("ort")
        runners = {k: ort.load(p, threads, policy) for k, p in paths.items()}
        rec_task = OcrRecTask().bind(onnx.load(str(paths["rec"]), load_external_data=False))
        return cls(det=runners["det"], cls=runners["cls"], rec=runners["rec"], det_input=runners["det"].input_names[0],
                   cls_input=runners["cls"].input_names[0], rec_task=rec_task,
                   describe={k: {"source": f"zoo:{names[k]}", "path": str(paths[k]), "engine": "ort", "precision": "fp32",
                                 "bytes": paths[k].stat().st_size} for k in paths})

    @classmethod
    def from_folder(cls, folder: str | Path, threads: int | None = None, policy: str | None = None) -> "OcrModels":
        """A pipeline folder (`pipeline.json` naming a deployment folder per stage)."""
        from ... import deploy

        folder = Path(folder)
        pj = folder / PIPELINE_FILE
        if not pj.is_file():
            hint = (" It holds one model's deploy.json: pass the pipeline folder written by `edgeslim optimize "
                    "ocr-pipeline`." if (folder / deploy.DEPLOY_FILE).is_file() else "")
            raise DataError(f"{folder}: no {PIPELINE_FILE} in this folder.{hint} Pass --models zoo or a folder written by "
                            "`edgeslim optimize ocr-pipeline`.")
        try:
            spec = json.loads(pj.read_text(encoding="utf-8"))
            stages = spec["stages"]
            sub = {k: folder / stages[k]["folder"] for k in ("det", "rec")}
            if stages.get("cls"):
                sub["cls"] = folder / stages["cls"]["folder"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{pj}: missing or malformed entry {e}. Write the folder again with `edgeslim optimize "
                            "ocr-pipeline`.") from None
        loaded = {k: deploy.load(p, threads=threads, policy=policy) for k, p in sub.items()}
        rec = loaded["rec"]
        if rec.task.name != "ocr-rec":
            raise DataError(f"{sub['rec']}: holds a {rec.task.name} model where the recognizer belongs. Write the folder again.")
        describe = {k: {"source": str(sub[k]), "engine": d.engine, "precision": d.precision,
                        "bytes": sum(f["bytes"] for f in d.spec.get("files", []) if f["name"] in d.spec["model_files"].values())}
                    for k, d in loaded.items()}
        c = loaded.get("cls")
        return cls(det=loaded["det"].runner, cls=c.runner if c else None, rec=rec.runner,
                   det_input=loaded["det"].input_names[0], cls_input=c.input_names[0] if c else None, rec_task=rec.task,
                   describe=describe)

    @classmethod
    def load(cls, source: str | Path | None = None, threads: int | None = None, policy: str | None = None) -> "OcrModels":
        """`None` or "zoo": the zoo models; else a pipeline folder."""
        if source is None or str(source) == "zoo":
            return cls.from_zoo(threads or 2, policy or ThreadPolicy.DEDICATED)
        p = Path(source)
        if not p.exists():
            raise DataError(f"--models {source}: not found. Pass zoo or a folder written by `edgeslim optimize ocr-pipeline`.")
        if not p.is_dir():
            raise DataError(f"--models {source}: a file; pass zoo or a pipeline folder (with {PIPELINE_FILE}).")
        return cls.from_folder(p, threads, policy)

    @property
    def total_bytes(self) -> int:
        return int(sum(d.get("bytes", 0) for d in self.describe.values()))


# ---- the pipeline ----------------------------------------------------------------------------------------------

class OcrPipeline:
    """Detector + angle classifier + recognizer with PP-OCR's pre/post-processing; `read` one image at a time."""

    def __init__(self, models: OcrModels, config: OcrConfig | None = None) -> None:
        self.models = models
        self.config = config or OcrConfig()

    @classmethod
    def load(cls, source: str | Path | None = None, config: OcrConfig | None = None, threads: int | None = None,
             policy: str | None = None) -> "OcrPipeline":
        """The pipeline of the zoo models (`source` None or "zoo") or of a pipeline folder. A folder's
        `pipeline.json` records its detector resize policy, used unless `config` is given."""
        models = OcrModels.load(source, threads, policy)
        if config is None and source not in (None, "zoo"):
            rec = json.loads((Path(source) / PIPELINE_FILE).read_text(encoding="utf-8")).get("config", {})
            if "det_resize" in rec:
                config = OcrConfig(det_resize=replace(parse_det_limit(rec["det_resize"]),
                                                      max_side=int(rec.get("det_max_side", 2000))))
        return cls(models, config)

    # -- stages (public so tasks, tests and benchmarks time and check them apart) --

    def detect(self, img: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        """Quads (float32, 4x2, ordered, inside the image) in reading order, and their DB scores."""
        cfg = self.config
        h, w = img.shape[:2]
        hw = cfg.det_resize.size(h, w)
        prob = self.models.det.run({self.models.det_input: _det_input(img, hw)})[0]
        boxes, scores = db_boxes(prob[0, 0], (h, w), cfg.db)
        quads, kept = [], []
        for b, s in zip(boxes, scores):
            q = clip_quad(order_quad(b), h, w)
            qw, qh = int(np.linalg.norm(q[0] - q[1])), int(np.linalg.norm(q[0] - q[3]))
            if qw <= cfg.min_box_side or qh <= cfg.min_box_side:
                continue
            quads.append(q)
            kept.append(float(s))
        order = reading_order(quads)
        return [quads[i] for i in order], [kept[i] for i in order]

    def classify(self, crops: list[np.ndarray]) -> list[tuple[int, float]]:
        """(label index, probability) per crop; label 1 means upside down."""
        m, cfg = self.models, self.config
        if not crops or m.cls is None:
            return [(0, 1.0)] * len(crops)
        order = sorted(range(len(crops)), key=lambda i: crops[i].shape[1] / crops[i].shape[0])
        out: list[tuple[int, float]] = [(0, 0.0)] * len(crops)
        for s in range(0, len(order), cfg.cls_batch):
            chunk = order[s : s + cfg.cls_batch]
            x = np.stack([_cls_input(crops[i], cfg.cls_height, cfg.cls_width) for i in chunk])
            probs = m.cls.run({m.cls_input: x})[0]
            for i, p in zip(chunk, probs):
                k = int(np.argmax(p))
                out[i] = (k, float(p[k]))
        return out

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) per crop; crops are batched by padded width (the recognizer task's rule)."""
        from ...tasks.ocr_rec import Line

        m = self.models
        if not crops:
            return []
        t = m.rec_task
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for b in t.batches([Line("", c, "") for c in crops], self.config.rec_batch):
            probs = m.rec.run(b.feeds)[0]
            for i, r in zip(b.index, ctc_decode_scored(probs, t.charset)):
                out[i] = r
        return out

    def read(self, image: str | Path | np.ndarray, name: str = "") -> OcrResult:
        """Every text line of one image (a path or a BGR uint8 array); an image without text gives no lines."""
        img, name = load_image(image, name)
        return self.read_array(img, name)

    def read_array(self, img: np.ndarray, name: str = "<array>") -> OcrResult:
        """As `read`, for a checked BGR uint8 array."""
        import cv2

        cfg = self.config
        raw_h, raw_w = img.shape[:2]
        pad = 0
        if raw_h <= LETTERBOX_MIN_HEIGHT or raw_w / raw_h > LETTERBOX_RATIO:
            pad = int(abs(max(int(raw_w / LETTERBOX_RATIO), LETTERBOX_MIN_HEIGHT) * 2 - raw_h) / 2)
            img = cv2.copyMakeBorder(img, pad, pad, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        sec: dict[str, float] = {}
        t0 = time.perf_counter()
        quads, box_scores = self.detect(img)
        t1 = time.perf_counter()
        sec["det"] = t1 - t0
        crops = [crop_quad(img, q) for q in quads]
        rotated = [False] * len(crops)
        if cfg.use_cls and self.models.cls is not None and crops:
            for i, (k, p) in enumerate(self.classify(crops)):
                if self.models.cls_labels[k] == "180" and p > cfg.cls_thresh:
                    crops[i] = cv2.rotate(crops[i], cv2.ROTATE_180)
                    rotated[i] = True
        t2 = time.perf_counter()
        sec["cls"] = t2 - t1
        read = self.recognize(crops)
        sec["rec"] = time.perf_counter() - t2
        lines = []
        for q, s, r, (text, score) in zip(quads, box_scores, rotated, read):
            if score < cfg.text_score:
                continue
            q = q.copy()
            q[:, 1] -= pad
            q[:, 0] = np.clip(q[:, 0], 0, raw_w)
            q[:, 1] = np.clip(q[:, 1], 0, raw_h)
            lines.append(OcrLine(quad=q.astype(np.int32).tolist(), text=text, score=score, box_score=s, rotated_180=r))
        sec["total"] = time.perf_counter() - t0
        return OcrResult(source=name, width=raw_w, height=raw_h, lines=lines, seconds=sec)

    def read_many(self, images: Iterable[str | Path | np.ndarray],
                  progress: Callable[[int], None] | None = None) -> list[OcrResult]:
        """`read` for each image, in order."""
        out = []
        for im in images:
            out.append(self.read(im))
            if progress:
                progress(1)
        return out

    def describe(self) -> dict:
        """Where each model came from, its engine, precision and bytes, and the configuration."""
        return {"models": self.models.describe, "total_bytes": self.models.total_bytes, "config": self.config.to_dict()}
