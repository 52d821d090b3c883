"""Text detection (DB, e.g. PP-OCR detectors). Metric: hmean (F1) of detected vs labelled quads at IoU 0.5.

Data: a folder of photos and a `labels.tsv` (or `lines.tsv`) with rows `image<TAB>x1,y1,...,x4,y4<TAB>ignore<TAB>
text` (a header row is skipped; `ignore` 1 or text `###` marks "do not care" text, as ICDAR does), images in the
folder or its `images/`; optional `split.json` ({"calib": [...], "eval": [...]}). Without `--data`: the bundled
photo-like set (`scripts/make_ocr_photos.py`).

Matching (ICDAR 2015 style): detections are paired one-to-one with labelled quads greedily by IoU (>= 0.5); a
detection that overlaps a do-not-care quad (IoU >= 0.5) counts neither way. precision = matched / counted
detections, recall = matched / counted labels, hmean = their harmonic mean. Fidelity: the same matching against
the fp32 detector's boxes instead of labels (no labels needed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Batch, Task, read_image

BUNDLED_PHOTOS = Path(__file__).resolve().parent.parent / "data" / "ocr_photos"
IOU_MATCH = 0.5
# A detector fed correctly finds some text on photos made for it; an hmean this low means wrong input.
BASELINE_HMEAN_LIMIT = 0.05

__all__ = ["Photo", "OcrDetTask", "load_photo_set", "match_quads", "detection_scores", "BUNDLED_PHOTOS"]


@dataclass
class Photo:
    name: str
    image: np.ndarray  # BGR uint8
    quads: list[np.ndarray] = field(default_factory=list)  # (4, 2) float32, image pixels
    ignore: list[bool] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def _read_rows(label_file: Path) -> list[tuple[int, str, np.ndarray, bool, str]]:
    try:
        text = label_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{label_file}: not UTF-8 text (byte {e.start}). Save it as UTF-8.") from None
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (k == 1 and line.lower().startswith("image\t")):
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(f"{label_file}:{k}: expected 'image<TAB>x1,y1,...,x4,y4<TAB>ignore<TAB>text', got "
                            f"{len(parts)} fields in {line[:60]!r}. Fix that line.")
        try:
            q = np.array([float(v) for v in parts[1].split(",")], np.float32)
            ign = parts[2].strip() not in ("0", "", "false", "False")
        except ValueError:
            q = np.zeros(0)
            ign = False
        if q.size != 8:
            raise DataError(f"{label_file}:{k}: the quad {parts[1][:60]!r} is not 8 numbers x1,y1,...,x4,y4. Fix that line.")
        rows.append((k, parts[0].strip(), q.reshape(4, 2), ign or parts[3].strip() == "###", parts[3]))
    if not rows:
        raise DataError(f"{label_file}: no labelled quads. Add rows 'image<TAB>x1,y1,...,x4,y4<TAB>ignore<TAB>text'.")
    return rows


def load_photo_set(folder: Path | None) -> tuple[list[Photo], list[Photo]]:
    """(calibration photos, evaluation photos) of a labelled photo folder (see the module docstring)."""
    folder = Path(folder) if folder is not None else BUNDLED_PHOTOS
    if not folder.exists():
        raise DataError(f"{folder}: data folder not found. Pass --data DIR holding photos and labels.tsv.")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder. Pass --data DIR holding photos and labels.tsv.")
    label_file = next((folder / n for n in ("labels.tsv", "lines.tsv") if (folder / n).is_file()), None)
    if label_file is None:
        what = "is empty" if not any(folder.iterdir()) else "has no labels.tsv"
        raise DataError(f"{folder} {what}. Put the photos and a labels.tsv ('image<TAB>x1,y1,...,x4,y4<TAB>ignore<TAB>text') in it.")
    rows = _read_rows(label_file)
    img_dir = folder / "images" if (folder / "images").is_dir() else folder
    names: list[str] = []
    for r in rows:
        if r[1] not in names:
            names.append(r[1])
    photos = {}
    for n in names:
        k = next(r[0] for r in rows if r[1] == n)
        photos[n] = Photo(n, read_image(img_dir / n, where=f"{label_file}:{k}: "))
    for _, n, q, ign, t in rows:
        photos[n].quads.append(q)
        photos[n].ignore.append(ign)
        photos[n].texts.append(t)
    split_file = folder / "split.json"
    if split_file.exists():
        try:
            split = json.loads(split_file.read_text())
            calib_names, eval_names = list(split["calib"]), list(split["eval"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{split_file}: expected {{\"calib\": [...], \"eval\": [...]}} ({e}). Fix or delete it.") from None
        unknown = [n for n in calib_names + eval_names if n not in photos]
        if unknown:
            raise DataError(f"{split_file}: {unknown[0]!r} is not in {label_file.name}. Fix split.json.")
        if set(calib_names) & set(eval_names):
            raise DataError(f"{split_file}: some photos are in both calib and eval. Make them disjoint.")
    else:
        n = len(names) // 2
        calib_names, eval_names = names[:n], names[n:]
    if not eval_names:
        raise DataError(f"{label_file}: no evaluation photos. Add more labelled photos.")
    return [photos[n] for n in calib_names], [photos[n] for n in eval_names]


def match_quads(dets: Sequence[np.ndarray], gts: Sequence[np.ndarray], gt_ignore: Sequence[bool] | None = None,
                iou: float = IOU_MATCH) -> tuple[int, int, int]:
    """(matched, counted detections, counted labels) of one image, ICDAR 2015 style (see the module docstring)."""
    from ._ocr_geometry import quad_iou

    gt_ignore = list(gt_ignore) if gt_ignore is not None else [False] * len(gts)
    care = [i for i in range(len(gts)) if not gt_ignore[i]]
    dont = [i for i in range(len(gts)) if gt_ignore[i]]
    counted = [d for d in range(len(dets)) if not any(quad_iou(dets[d], gts[g]) >= iou for g in dont)]
    pairs = sorted(((quad_iou(dets[d], gts[g]), d, g) for d in counted for g in care), reverse=True)
    used_d, used_g, matched = set(), set(), 0
    for v, d, g in pairs:
        if v < iou:
            break
        if d in used_d or g in used_g:
            continue
        used_d.add(d)
        used_g.add(g)
        matched += 1
    return matched, len(counted), len(care)


def detection_scores(per_image: Sequence[tuple[int, int, int]]) -> dict[str, float]:
    """precision, recall and hmean over images from `match_quads` counts."""
    m = sum(x[0] for x in per_image)
    nd = sum(x[1] for x in per_image)
    ng = sum(x[2] for x in per_image)
    p = m / nd if nd else (1.0 if ng == 0 else 0.0)
    r = m / ng if ng else 1.0
    return {"precision": p, "recall": r, "hmean": 2 * p * r / (p + r) if p + r > 0 else 0.0}


@register_task("ocr-det")
class OcrDetTask(Task):
    """DB text detector (PP-OCR det). Preprocessing: resize so the longer side is at most 960 (`det_limit`
    "max:960"; "min:736" is RapidOCR's policy), sides multiples of 32, BGR, (x/255 - 0.5)/0.5. Postprocessing: DB
    (threshold 0.3, box score 0.5, unclip 1.6). One photo per batch: photo sizes differ."""

    name = "ocr-det"
    metric_name = "hmean"
    higher_is_better = True
    default_budget = 0.01

    def __init__(self, det_limit: str = "max:960", eval_limit: int | None = None, calib_limit: int | None = None,
                 db: dict | None = None) -> None:
        from ._ocr_db import DBConfig
        from ._ocr_photo import parse_det_limit

        self.resize = parse_det_limit(det_limit)
        self.db = DBConfig(**(db or {}))
        self.eval_limit, self.calib_limit = eval_limit, calib_limit
        self.input_name = "x"

    def bind(self, model) -> "OcrDetTask":
        inits = {t.name for t in model.graph.initializer}
        self.input_name = [i.name for i in model.graph.input if i.name not in inits][0]
        return self

    def load(self, data: Path | None) -> tuple[list[Photo], list[Photo]]:
        calib, ev = load_photo_set(data)
        if self.calib_limit:
            calib = calib[: self.calib_limit]
        if self.eval_limit:
            ev = ev[: self.eval_limit]
        return calib, ev

    def feed(self, image: np.ndarray) -> np.ndarray:
        from ._ocr_photo import det_input as _det_input

        h, w = image.shape[:2]
        return _det_input(image, self.resize.size(h, w))

    def batches(self, samples: list[Photo], batch_size: int = 8) -> Iterator[Batch]:
        for i, s in enumerate(samples):
            yield Batch({self.input_name: self.feed(s.image)}, [i])

    def decode(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Per image: quads (N, 4, 2) as fractions of the image's width and height (the map covers the image)."""
        from ._ocr_db import db_boxes

        out = []
        for prob in outputs[0]:
            h, w = prob.shape[-2:]
            boxes, _ = db_boxes(prob.reshape(h, w), (h, w), self.db)
            out.append(boxes.astype(np.float32) / np.array([w, h], np.float32))
        return out

    @staticmethod
    def _pixels(pred: np.ndarray, photo: Photo) -> list[np.ndarray]:
        h, w = photo.image.shape[:2]
        return [q * np.array([w, h], np.float32) for q in pred]

    def score(self, preds: list, samples: list[Photo], reference: list | None = None) -> dict[str, float]:
        counts = [match_quads(self._pixels(p, s), s.quads, s.ignore) for p, s in zip(preds, samples)]
        sc = detection_scores(counts)
        return {"metric": sc["hmean"], "precision": sc["precision"], "recall": sc["recall"]}

    def fidelity(self, preds: list, ref_preds: list) -> dict[str, float]:
        counts = [match_quads(p, r) for p, r in zip(preds, ref_preds)]
        same = [c[0] == c[1] == c[2] for c in counts]
        return {"exact_match": float(np.mean(same)) if same else 1.0, "metric_vs_fp32": detection_scores(counts)["hmean"]}

    def bench_feeds(self, samples: list[Photo]) -> dict[str, np.ndarray]:
        # the latency of a photo-sized input; a 4:3 photo at the default policy is 960x704
        h, w = self.resize.size(*(samples[0].image.shape[:2] if samples else (720, 960)))
        rng = np.random.default_rng(0)
        return {self.input_name: rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)}

    def baseline_problem(self, metric: float, n_eval: int) -> str | None:
        if metric >= BASELINE_HMEAN_LIMIT:
            return None
        return (f"baseline hmean {metric:.3f} on {n_eval} photos: the original detector finds almost none of the "
                "labelled text, so the data or the preprocessing does not match it. Check labels.tsv's quads are in "
                "image pixels (x1,y1,...,x4,y4) and that the model is a DB detector (PP-OCR det) with a 1-channel "
                "probability map output.")

    # ---- deployment ---------------------------------------------------------------------------------------------

    def deploy_spec(self) -> dict:
        return {
            "name": self.name,
            "preprocess": {
                "input": self.input_name, "layout": "NCHW", "channel_order": "BGR",
                "resize": {"mode": self.resize.mode, "limit": self.resize.limit, "max_side": self.resize.max_side,
                           "multiple": 32, "interpolation": "linear",
                           "rule": "max: longer side at most limit; min: shorter side at least limit, longer side at "
                                   "most max_side; then each side rounded to a multiple of 32 (at least 32)"},
                "normalize": {"divide_by": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "formula": "(x / 255 - mean) / std, in float32"},
            },
            "postprocess": {"type": "db", "output": 0, **self.db.__dict__,
                            "rule": "threshold the map, dilate 2x2, contours, min-area boxes, mean-score filter, "
                                    "unclip by area*ratio/perimeter, min-area box, scale to the image"},
        }

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "OcrDetTask":
        pre, post = spec["preprocess"], spec["postprocess"]
        db = {k: post[k] for k in ("thresh", "box_thresh", "unclip_ratio", "max_candidates", "min_size", "dilate") if k in post}
        t = cls(det_limit=f"{pre['resize']['mode']}:{pre['resize']['limit']}", db=db)
        t.resize = type(t.resize)(limit=t.resize.limit, mode=t.resize.mode, max_side=int(pre["resize"].get("max_side", 2000)))
        t.input_name = pre["input"]
        return t

    def samples_from(self, inputs) -> list[Photo]:
        """Image paths or BGR uint8 arrays, one or a list."""
        from ._ocr_photo import load_image

        if isinstance(inputs, (str, Path, np.ndarray)):
            inputs = [inputs]
        out = []
        for i, x in enumerate(inputs):
            img, name = load_image(x, f"<array {i}>" if isinstance(x, np.ndarray) else "")
            out.append(Photo(name, img))
        return out

    def predict(self, runner, inputs) -> list[list[list[list[int]]]]:
        """Per image, its text quads in image pixels (int corners)."""
        from .base import evaluate

        samples = self.samples_from(inputs)
        preds, _ = evaluate(runner, self, samples)
        return [[np.round(q).astype(int).tolist() for q in self._pixels(p, s)] for p, s in zip(preds, samples)]
