"""Face detection (YuNet: boxes + 5 landmarks). Metric: recall at IoU 0.5, WIDER FACE style.

Data (`--data`), one of:
- a folder with `annotations.json`: a list (or `{"images": [...]}`) of `{image, faces: [{bbox_xywh, in_easy,
  in_medium, in_hard, invalid}]}` (the flags optional) or `{image, faces_xywh: [[x, y, w, h], ...]}`;
- a folder with `label.txt` in the RetinaFace format (`# <path>` then `x y w h ...` per face);
- a folder of images without labels: the metric is then agreement with the fp32 model's boxes (label-free);
- a `.json` file `{"calib": DIR, "eval": DIR}` naming a calibration folder and an evaluation folder (relative to the
  file), so calibration never touches held-out evaluation photos.
Image paths resolve against the folder, then its `images/` sub-folder. A folder alone calibrates on its first half.

The WIDER protocol (Yang et al., "WIDER FACE: A Face Detection Benchmark", CVPR 2016) scores a level (Easy, Medium,
Hard) on the faces it keeps; a detection that matches a face the level leaves out (or one flagged invalid) is
ignored, neither a hit nor a false alarm. `recall_<level>` is the share of the level's faces matched (IoU >= 0.5)
by a detection at the operating threshold (default 0.6), `ap_<level>` the area under the precision/recall curve of
all detections down to score 0.02 (every point interpolated, VOC style). The metric is recall on the hardest level
present (Hard, which holds Easy and Medium; or every labelled face without flags); a candidate is rejected when any
level's recall drops more than `level_budget` (default 0.01).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError, InvalidParameterError
from . import register_task
from .base import Batch, Task, images_from, read_image

__all__ = ["DetectTask", "FaceImage", "match_level", "average_precision", "box_agreement", "read_face_folder"]

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
LEVELS = ("easy", "medium", "hard")
# A YuNet fed correctly finds a good share of labelled faces; below this the input or the model is wrong.
BASELINE_RECALL_LIMIT = 0.05


@dataclass
class FaceImage:
    """One photo and its labelled faces (x, y, w, h); `levels`: per WIDER level, which faces it keeps (None: no flags);
    `valid`: faces that count at all (WIDER's `invalid` flag and zero-size boxes are left out)."""

    name: str
    image: np.ndarray
    boxes: np.ndarray | None  # None: unlabelled
    valid: np.ndarray | None = None
    levels: dict[str, np.ndarray] = field(default_factory=dict)


def _resolve_image(folder: Path, name: str, where: str) -> np.ndarray:
    for p in (folder / name, folder / "images" / name):
        if p.exists():
            return read_image(p, where)
    return read_image(folder / name, where)  # raises naming the missing file


def _faces_from_json(folder: Path, f: Path) -> list[FaceImage]:
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{f}: not valid JSON ({e}). Fix or regenerate it.") from None
    items = d.get("images") if isinstance(d, dict) else d
    if not isinstance(items, list) or not items:
        raise DataError(f"{f}: expected a list of {{image, faces}} entries (or {{\"images\": [...]}}). Fix the file.")
    out = []
    for k, it in enumerate(items):
        try:
            name = str(it["image"])
            if "faces_xywh" in it:
                faces = [{"bbox_xywh": b} for b in it["faces_xywh"]]
            else:
                faces = list(it["faces"])
            boxes = np.array([fc["bbox_xywh"] for fc in faces], np.float64).reshape(-1, 4)
            valid = np.array([not fc.get("invalid", 0) for fc in faces], bool) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
            levels = {}
            if faces and all(f"in_{lv}" in fc for fc in faces for lv in LEVELS):
                levels = {lv: np.array([bool(fc[f"in_{lv}"]) for fc in faces], bool) & valid for lv in LEVELS}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{f}: entry {k} lacks or garbles {e} (need image and faces[].bbox_xywh, or faces_xywh). "
                            "Fix that entry.") from None
        out.append(FaceImage(name, _resolve_image(folder, name, f"{f}: entry {k}: "), boxes, valid, levels))
    return out


def _faces_from_label_txt(folder: Path, f: Path) -> list[FaceImage]:
    out: list[FaceImage] = []
    cur: tuple[str, list] | None = None
    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()

    def flush() -> None:
        if cur is not None:
            boxes = np.array(cur[1], np.float64).reshape(-1, 4)
            valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
            out.append(FaceImage(cur[0], _resolve_image(folder, cur[0], f"{f}: "), boxes, valid))

    for k, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            flush()
            cur = (line[1:].strip(), [])
            continue
        parts = line.split()
        if cur is None or len(parts) < 4:
            raise DataError(f"{f}:{k}: expected '# <image>' or 'x y w h ...', got {line[:60]!r}. Fix that line.")
        try:
            cur[1].append([float(v) for v in parts[:4]])
        except ValueError:
            raise DataError(f"{f}:{k}: box values are not numbers ({line[:60]!r}). Fix that line.") from None
    flush()
    if not out:
        raise DataError(f"{f}: no '# <image>' entries. Write one '# <image>' line, then 'x y w h' per face.")
    return out


def read_face_folder(folder: Path) -> list[FaceImage]:
    """The labelled (or unlabelled) photos of one folder, in a fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found. Pass --data DIR with images (and annotations.json or "
                        "label.txt), or a .json file naming calib and eval folders.")
    if (folder / "annotations.json").is_file():
        return _faces_from_json(folder, folder / "annotations.json")
    if (folder / "label.txt").is_file():
        return _faces_from_label_txt(folder, folder / "label.txt")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXT and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no images and no annotations.json/label.txt. Add photos (png/jpg).")
    return [FaceImage(str(p.relative_to(folder)), read_image(p), None) for p in files]


# ---- scoring -------------------------------------------------------------------------------------------------

def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from ._yunet import iou_xywh

    return iou_xywh(a, b)


def match_level(dets: np.ndarray, gt: np.ndarray, keep: np.ndarray, iou_thr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """WIDER-style matching of one image. `dets`: N x 5+ (x, y, w, h, ..., score last), best first; `gt`: M x 4;
    `keep`: the faces this level counts. Returns per detection 1 (hit), 0 (false alarm) or -1 (ignored: it matched
    a face the level leaves out), and per face whether it was hit."""
    flags = np.zeros(len(dets), np.int8)
    hit = np.zeros(len(gt), bool)
    if len(dets) == 0:
        return flags, hit
    if len(gt) == 0:
        return flags, hit
    iou = _iou(dets[:, :4], gt)
    for i in np.argsort(-dets[:, -1], kind="stable"):
        cand = np.where(iou[i] >= iou_thr)[0]
        if cand.size == 0:
            continue
        free = cand[~hit[cand] & keep[cand]]
        if free.size:  # the best still-unmatched counted face
            j = free[np.argmax(iou[i, free])]
            hit[j], flags[i] = True, 1
        elif (~keep[cand]).any():
            flags[i] = -1
        # else: a duplicate of a counted face already hit: a false alarm (flags 0)
    return flags, hit


def average_precision(scores: np.ndarray, flags: np.ndarray, n_pos: int) -> float:
    """Area under the interpolated precision/recall curve of detections pooled over images (ignored ones dropped)."""
    if n_pos == 0:
        return float("nan")
    m = flags >= 0
    s, f = scores[m], flags[m]
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(f[order] == 1)
    fp = np.cumsum(f[order] == 0)
    rec = np.concatenate([[0.0], tp / n_pos, [tp[-1] / n_pos if len(tp) else 0.0]])
    prec = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1), [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    return float(np.sum((rec[1:] - rec[:-1]) * prec[1:]))


def box_agreement(preds: list[np.ndarray], refs: list[np.ndarray], iou_thr: float = 0.5) -> tuple[float, float]:
    """(F1 of one-to-one box matching at IoU >= iou_thr over all images, share of images matched exactly)."""
    tp = n_p = n_r = 0
    same = 0
    for p, r in zip(preds, refs):
        n_p, n_r = n_p + len(p), n_r + len(r)
        if len(p) == 0 or len(r) == 0:
            same += len(p) == len(r)
            continue
        iou = _iou(p[:, :4], r[:, :4])
        used = np.zeros(len(r), bool)
        k = 0
        for i in range(len(p)):
            c = np.where((iou[i] >= iou_thr) & ~used)[0]
            if c.size:
                used[c[np.argmax(iou[i, c])]] = True
                k += 1
        tp += k
        same += k == len(p) == len(r)
    f1 = 1.0 if n_p + n_r == 0 else 2 * tp / (n_p + n_r)
    return float(f1), float(same / max(len(preds), 1))


@register_task("detect")
class DetectTask(Task):
    """YuNet face detection; see the module docstring for data formats and the metric."""

    name = "detect"
    metric_name = "recall"
    higher_is_better = True
    default_budget = 0.01

    def __init__(self, score_threshold: float = 0.6, nms_threshold: float = 0.3, min_score: float = 0.02,
                 calib_size: int = 32, eval_limit: int | None = None, level_budget: float = 0.01) -> None:
        from ._yunet import YunetConfig

        for n, v in (("score_threshold", score_threshold), ("min_score", min_score)):
            if not 0.0 <= v <= 1.0:
                raise InvalidParameterError(f"detect task: {n}={v!r}; give a number from 0 to 1.")
        self.score_threshold, self.nms_threshold, self.min_score = score_threshold, nms_threshold, min_score
        self.calib_size, self.eval_limit, self.level_budget = calib_size, eval_limit, level_budget
        # decode keeps every detection down to min_score: greedy NMS keeps the same boxes above any higher threshold,
        # so recall at the operating threshold is a filter of these, and AP sees the full curve
        self._cfg = YunetConfig(score_threshold=min_score, nms_threshold=nms_threshold, top_k=5000)
        self.input_name = "input"
        self.input_size: tuple[int, int] | None = (640, 640)
        self.output_names: list[str] | None = None
        self._feed: tuple[int, int, float] = (640, 640, 1.0)
        self.labelled_ = True

    def bind(self, model) -> "DetectTask":
        inits = {t.name for t in model.graph.initializer}
        inp = [i for i in model.graph.input if i.name not in inits][0]
        self.input_name = inp.name
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
        self.input_size = (dims[2], dims[3]) if len(dims) == 4 and dims[2] > 0 and dims[3] > 0 else None
        self.output_names = [o.name for o in model.graph.output]
        from ._yunet import check_outputs

        check_outputs([np.zeros(1)] * len(self.output_names), self.output_names)  # not YuNet: one clear error
        return self

    def load(self, data: Path | None) -> tuple[list[FaceImage], list[FaceImage]]:
        if data is None:
            raise DataError("the detect task needs --data: a folder of face photos (with annotations.json or label.txt "
                            "for recall), or a .json file {\"calib\": DIR, \"eval\": DIR}.")
        p = Path(data)
        if p.is_file() and p.suffix.lower() == ".json":
            try:
                spec = json.loads(p.read_text(encoding="utf-8"))
                calib_dir, eval_dir = p.parent / spec["calib"], p.parent / spec["eval"]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{p}: expected {{\"calib\": DIR, \"eval\": DIR}} ({e}). Fix the file.") from None
            if Path(calib_dir).resolve() == Path(eval_dir).resolve():
                raise DataError(f"{p}: calib and eval name the same folder. Calibrate on other photos than you evaluate on.")
            calib, ev = read_face_folder(calib_dir)[: self.calib_size], read_face_folder(eval_dir)
        else:
            items = read_face_folder(p)
            if len(items) < 2:
                raise DataError(f"{p}: {len(items)} image(s). Provide at least 2 (some calibrate, the rest evaluate).")
            n = min(self.calib_size, len(items) // 2)
            calib, ev = items[:n], items[n:]
        if self.eval_limit:
            ev = ev[: self.eval_limit]
        self.labelled_ = all(s.boxes is not None for s in ev)
        if not self.labelled_:
            self.metric_name = "box_f1_vs_fp32"
        return calib, ev

    # ---- feeding ---------------------------------------------------------------------------------------------

    def _letterbox(self, img: np.ndarray):
        from ._yunet import letterbox

        return letterbox(img, self.input_size, 32)

    def batches(self, samples: list[FaceImage], batch_size: int = 8) -> Iterator[Batch]:
        # one image per batch: photos differ in size, and the 640x640 export has a fixed batch of 1. `decode` needs
        # the feed's size (the prior grid) and scale, which the outputs alone do not tell: the batch just yielded
        # is the one `evaluate` decodes next (it runs them strictly in turn)
        for i, s in enumerate(samples):
            x, lb = self._letterbox(s.image)
            self._feed = (lb.height, lb.width, lb.scale)
            yield Batch({self.input_name: x}, [i])

    def decode(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, N x 15 rows (x, y, w, h, 5 landmarks, score) in the image's pixels, best first."""
        from ._yunet import canonical_names, decode

        h, w, scale = self._feed
        names = canonical_names(self.output_names or [])
        d = decode(outputs, h, w, self._cfg, names=names)
        d[:, :14] /= scale
        return [d]

    # ---- metric ----------------------------------------------------------------------------------------------

    def _levels(self, samples: list[FaceImage]) -> list[str]:
        return list(LEVELS) if samples and all(s.levels for s in samples) else ["all"]

    def level_scores(self, preds: list[np.ndarray], samples: list[FaceImage]) -> dict[str, float]:
        """recall_<level> (at the operating threshold) and ap_<level>, per WIDER level or `all`."""
        out: dict[str, float] = {}
        for lv in self._levels(samples):
            flags_all, scores_all, n_pos, n_hit = [], [], 0, 0
            for p, s in zip(preds, samples):
                keep = s.levels[lv] if lv != "all" else s.valid
                flags, _ = match_level(p, s.boxes, keep)
                flags_all.append(flags)
                scores_all.append(p[:, -1])
                op = p[p[:, -1] >= self.score_threshold]
                _, hit = match_level(op, s.boxes, keep)
                n_pos += int(keep.sum())
                n_hit += int(hit.sum())
            out[f"recall_{lv}"] = n_hit / max(n_pos, 1)
            out[f"ap_{lv}"] = average_precision(np.concatenate(scores_all) if scores_all else np.zeros(0),
                                                np.concatenate(flags_all) if flags_all else np.zeros(0, np.int8), n_pos)
            out[f"faces_{lv}"] = float(n_pos)
        return out

    def _op(self, preds: list[np.ndarray]) -> list[np.ndarray]:
        return [p[p[:, -1] >= self.score_threshold] for p in preds]

    def score(self, preds: list[np.ndarray], samples: list[FaceImage], reference: list | None = None) -> dict[str, float]:
        if len(preds) != len(samples):
            raise ValueError(f"detect score: {len(preds)} predictions for {len(samples)} images")
        if not all(s.boxes is not None for s in samples):  # label-free: agreement with the fp32 model
            if reference is None:
                return {"metric": 1.0}
            f1, same = box_agreement(self._op(preds), self._op(reference))
            return {"metric": f1, "images_identical": same}
        out = self.level_scores(preds, samples)
        levels = self._levels(samples)
        res = {"metric": out[f"recall_{levels[-1]}"], **out}
        if reference is not None:
            ref = self.level_scores(reference, samples)
            res["worst_level_drop"] = max(ref[f"recall_{lv}"] - out[f"recall_{lv}"] for lv in levels)
        return res

    def extra_problem(self, metric_extra: dict[str, float]) -> str | None:
        d = metric_extra.get("worst_level_drop")
        if d is None or d <= self.level_budget:
            return None
        return f"recall drops {d:.4f} on one WIDER level (limit {self.level_budget} per level)"

    def fidelity(self, preds: list[np.ndarray], ref_preds: list[np.ndarray]) -> dict[str, float]:
        f1, same = box_agreement(self._op(preds), self._op(ref_preds))
        return {"exact_match": same, "metric_vs_fp32": 1.0 - f1}

    def baseline_problem(self, metric: float, n_eval: int) -> str | None:
        if not self.labelled_ or metric >= BASELINE_RECALL_LIMIT:
            return None
        return (f"baseline recall {metric:.3f} on {n_eval} images: the original model finds almost no labelled face, "
                "so the data or the model does not fit the detect task. It expects a YuNet model (outputs cls/obj/bbox/"
                "kps at strides 8/16/32) fed raw BGR 0..255, and boxes as x y w h in image pixels.")

    def bench_feeds(self, samples: list[FaceImage]) -> dict[str, np.ndarray]:
        return next(iter(self.batches(samples[:1], 1))).feeds

    # ---- deployment ------------------------------------------------------------------------------------------

    def deploy_spec(self) -> dict:
        return {
            "name": self.name,
            "preprocess": {
                "input": self.input_name, "layout": "NCHW", "channel_order": "BGR",
                "input_size": list(self.input_size) if self.input_size else None,
                "resize": "fixed size: scale down (never up) to fit input_size keeping aspect ratio; dynamic: none",
                "pad": {"side": "right/bottom", "value": 0.0, "multiple": 32},
                "normalize": {"formula": "x as float32 in 0..255, no mean/std"},
            },
            "postprocess": {
                "type": "yunet", "strides": [8, 16, 32], "outputs": list(self.output_names or []),
                "score": "sqrt(clip(cls, 0, 1) * clip(obj, 0, 1))",
                "box": "cx = (col + dx) * s, cy = (row + dy) * s, w = exp(dw) * s, h = exp(dh) * s",
                "landmarks": "x = (col + lx) * s, y = (row + ly) * s",
                "score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold,
                "nms": "greedy, IoU of integer (truncated) x y w h boxes",
            },
        }

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "DetectTask":
        pre, post = spec["preprocess"], spec["postprocess"]
        t = cls(score_threshold=float(post["score_threshold"]), nms_threshold=float(post["nms_threshold"]))
        t.input_name = pre["input"]
        t.input_size = tuple(pre["input_size"]) if pre.get("input_size") else None
        t.output_names = list(post.get("outputs") or []) or None
        return t

    def samples_from(self, inputs) -> list[FaceImage]:
        """Image paths or BGR uint8 arrays (HxWx3; gray and BGRA are converted), one or a list."""
        return [FaceImage(name, img, None) for name, img in images_from(inputs)]

    def predict(self, runner, inputs) -> list[list[dict]]:
        """Per image, the faces at the operating threshold: {box, score, landmarks} in image pixels."""
        from ._yunet import to_faces
        from .base import evaluate

        preds, _ = evaluate(runner, self, self.samples_from(inputs))
        return [[f.to_dict() for f in to_faces(p)] for p in self._op(preds)]
