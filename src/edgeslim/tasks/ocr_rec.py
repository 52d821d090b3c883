"""Text-line recognition (CTC), e.g. PP-OCR recognizers. Metric: character error rate (CER)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import DataError, InvalidParameterError
from . import register_task
from .base import Batch, Task, images_from, read_image

BUNDLED = Path(__file__).resolve().parent.parent / "data" / "ocr_synth"
# A recognizer fed correctly gets most characters right; a CER this high means wrong input, not a weak model.
BASELINE_CER_LIMIT = 0.9


@dataclass
class Line:
    name: str
    image: np.ndarray  # BGR uint8
    text: str


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute: cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Sum of edit distances over sum of reference lengths."""
    if len(preds) != len(refs):  # zip would silently score a prefix
        raise ValueError(f"cer: {len(preds)} predictions for {len(refs)} references")
    total = sum(len(r) for r in refs)
    return sum(edit_distance(p, r) for p, r in zip(preds, refs)) / max(total, 1)


def ctc_greedy(probs: np.ndarray, charset: Sequence[str]) -> list[str]:
    """Best-path CTC decoding: argmax per step, merge repeats, drop blank (index 0)."""
    idx = probs.argmax(axis=-1)
    if probs.shape[-1] > len(charset):
        # a model with more classes than the charset has entries: dropping the extra indices would read as a
        # better CER, so this is an error
        raise DataError(f"the model outputs {probs.shape[-1]} classes but the charset has {len(charset)} entries "
                        "(blank + characters + space). Use the model's own dictionary.")
    out = []
    for row in idx:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(charset[i] for i in row[keep]))
    return out


def read_labels(path: Path) -> list[tuple[int, str, str]]:
    """`filename<TAB>text` per line; a bad line is a `DataError` naming file and line."""
    if not path.exists():
        raise DataError(f"{path}: label file not found. An OCR data folder needs labels.tsv with lines 'filename<TAB>text'.")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}). Save labels.tsv as UTF-8.") from None
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise DataError(
                f"{path}:{k}: expected 'filename<TAB>text', got {len(parts) - 1} tabs in {line[:60]!r}. Fix that line."
            )
        rows.append((k, parts[0].strip(), parts[1]))
    if not rows:
        raise DataError(f"{path}: no labelled lines. Add lines 'filename<TAB>text'.")
    return rows


def load_lines(folder: Path, rows: list[tuple[int, str, str]], label_file: Path) -> list[Line]:
    return [Line(name, read_image(folder / name, where=f"{label_file}:{k}: "), text) for k, name, text in rows]


def check_lines(folder: Path, rows: list[tuple[int, str, str]], label_file: Path) -> None:
    """Decode each listed image and drop it: a broken file fails now, not in a later run with a larger limit."""
    for k, name, _ in rows:
        read_image(folder / name, where=f"{label_file}:{k}: ")


@register_task("ocr-rec")
class OcrRecTask(Task):
    """CTC text recognizer. Data: a folder with images and `labels.tsv` (`filename<TAB>text`), optional
    `split.json` ({"calib": [...], "eval": [...]}); without a split the first `calib_size` lines calibrate.

    Preprocessing follows PaddleOCR/RapidOCR: resize to height 48 keeping aspect ratio, scale to [-1, 1], pad
    right with zeros to a width of at least 320. Lines batch together by padded width (a multiple of 32).
    """

    name = "ocr-rec"
    metric_name = "cer"
    higher_is_better = False
    default_budget = 0.005

    def __init__(self, charset: Sequence[str] | None = None, height: int = 48, min_width: int = 320,
                 max_width: int = 1600, calib_size: int = 96, eval_limit: int | None = None, bench_batch: int = 1) -> None:
        self.charset = list(charset) if charset is not None else None
        self.height, self.min_width, self.max_width = height, min_width, max_width
        self.calib_size, self.eval_limit = calib_size, eval_limit
        if int(bench_batch) < 1:
            raise InvalidParameterError(f"bench_batch={bench_batch}: the lines per timed run must be at least 1.")
        self.bench_batch = int(bench_batch)  # a pipeline that runs lines in batches times its candidates on one

    @staticmethod
    def charset_from_model(model) -> list[str]:
        """PaddleOCR ONNX exports carry their dictionary as metadata `character`; classes are blank + chars + space."""
        for p in model.metadata_props:
            if p.key == "character":
                return ["<blank>"] + p.value.splitlines() + [" "]
        raise DataError("the model has no 'character' metadata entry (its CTC dictionary). Add it: "
                        "m.metadata_props.add(key='character', value=open('dict.txt').read()) with onnx, then save the model.")

    def default_data(self) -> Path:
        return BUNDLED

    def load(self, data: Path | None) -> tuple[list[Line], list[Line]]:
        folder = Path(data) if data is not None else BUNDLED
        if not folder.exists():
            raise DataError(f"{folder}: data folder not found. Pass --data DIR holding images and labels.tsv.")
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder. Pass --data DIR holding images and labels.tsv.")
        label_file = folder / "labels.tsv"
        if not label_file.exists() and not any(folder.iterdir()):
            raise DataError(f"{folder} is empty. Put the images and a labels.tsv ('filename<TAB>text') in it.")
        rows = read_labels(label_file)
        split_file = folder / "split.json"
        if split_file.exists():
            try:
                split = json.loads(split_file.read_text())
                calib_names, eval_names = set(split["calib"]), list(split["eval"])
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{split_file}: expected {{\"calib\": [...], \"eval\": [...]}} ({e}). Fix or delete it.") from None
            if calib_names & set(eval_names):
                raise DataError(f"{split_file}: {len(calib_names & set(eval_names))} lines are in both calib and eval. Make them disjoint.")
            calib_rows = [r for r in rows if r[1] in calib_names]
            eval_rows = [r for r in rows if r[1] in set(eval_names)]
        else:
            n = min(self.calib_size, len(rows) // 2) if len(rows) > 1 else 0
            calib_rows, eval_rows = rows[:n], rows[n:]
        if not eval_rows:
            raise DataError(f"{label_file}: no evaluation lines. Add more labelled images.")
        if self.eval_limit:
            eval_rows = eval_rows[: self.eval_limit]
        # Every listed image must decode, also those this run leaves out (past the limit, outside split.json).
        used = {r[0] for r in calib_rows} | {r[0] for r in eval_rows}
        calib = load_lines(folder, calib_rows, label_file)
        check_lines(folder, [r for r in rows if r[0] not in used], label_file)
        return calib, load_lines(folder, eval_rows, label_file)

    def _prep(self, img: np.ndarray) -> np.ndarray:
        import cv2

        h, w = img.shape[:2]
        rw = int(min(self.max_width, max(1, math.ceil(self.height * w / max(h, 1)))))
        x = cv2.resize(img, (rw, self.height)).astype(np.float32).transpose(2, 0, 1)
        return (x / 255.0 - 0.5) / 0.5

    def _width(self, x: np.ndarray) -> int:
        return max(self.min_width, int(math.ceil(x.shape[2] / 32) * 32))

    def batches(self, samples: list[Line], batch_size: int = 8) -> Iterator[Batch]:
        prepped = [self._prep(s.image) for s in samples]
        order = sorted(range(len(samples)), key=lambda i: prepped[i].shape[2])
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(self._width(prepped[i]), []).append(i)
        for width, idx in groups.items():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                x = np.zeros((len(chunk), 3, self.height, width), np.float32)
                for j, i in enumerate(chunk):
                    x[j, :, :, : prepped[i].shape[2]] = prepped[i]
                yield Batch({self.input_name: x}, chunk)

    input_name = "x"

    def bind(self, model) -> "OcrRecTask":
        """Take the input name and, unless given, the character list from the model."""
        inits = {t.name for t in model.graph.initializer}
        self.input_name = [i.name for i in model.graph.input if i.name not in inits][0]
        if self.charset is None:
            self.charset = self.charset_from_model(model)
        return self

    def decode(self, outputs: list[np.ndarray]) -> list[str]:
        return ctc_greedy(outputs[0], self.charset)

    def score(self, preds: list[str], samples: list[Line], reference: list | None = None) -> dict[str, float]:
        refs = [s.text for s in samples]
        return {"metric": cer(preds, refs), "line_acc": float(np.mean([p == r for p, r in zip(preds, refs)]))}

    def fidelity(self, preds: list[str], ref_preds: list[str]) -> dict[str, float]:
        return {"exact_match": float(np.mean([p == r for p, r in zip(preds, ref_preds)])), "metric_vs_fp32": cer(preds, ref_preds)}

    def bench_feeds(self, samples: list[Line]) -> dict[str, np.ndarray]:
        """One line at the minimum width; with `bench_batch` > 1, a batch as a pipeline runs it: that many lines at
        the median padded width of `samples` (engines without a batch axis, ncnn, run it line by line)."""
        width = self.min_width
        if self.bench_batch > 1 and samples:
            widths = sorted(self._width(self._prep(s.image)) for s in samples)
            width = widths[len(widths) // 2]
        return {self.input_name: np.repeat(_bench_pattern(self.height, width), self.bench_batch, axis=0)}

    def baseline_problem(self, metric: float, n_eval: int) -> str | None:
        if metric < BASELINE_CER_LIMIT:
            return None
        return (f"baseline CER {metric:.3f} on {n_eval} lines: the original model reads almost nothing right, so the "
                "data or the preprocessing does not match it. Check the model's 'character' metadata (its dictionary, "
                f"one entry per line; the blank is added first), the input height ({self.height}; PP-OCR uses 48) and the "
                "normalisation ((x/255 - 0.5)/0.5), and that labels.tsv holds the text of each image.")

    # ---- deployment -----------------------------------------------------------------------------------------

    def deploy_spec(self) -> dict:
        if self.charset is None:
            raise DataError("the ocr-rec task has no charset yet: bind it to the model (or pass charset=) first.")
        return {
            "name": self.name,
            "preprocess": {
                "input": self.input_name,
                "layout": "NCHW",
                # cv2 decodes to BGR and the task feeds that order unchanged (PaddleOCR does the same).
                "channel_order": "BGR",
                "resize": {"height": self.height, "keep_aspect_ratio": True, "interpolation": "linear",
                           "width": "min(max_width, max(1, ceil(height * w / h)))", "max_width": self.max_width},
                "normalize": {"divide_by": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "formula": "(x / 255 - mean) / std, in float32"},
                "pad": {"side": "right", "value": 0.0, "multiple": 32, "min_width": self.min_width,
                        "width": "max(min_width, ceil(resized_width / 32) * 32)"},
            },
            "postprocess": {
                "type": "ctc_greedy", "output": 0, "blank": 0,
                "rule": "argmax per time step, merge repeats, drop the blank (index 0), map indices through charset",
                "charset": list(self.charset),
            },
        }

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "OcrRecTask":
        pre, post = spec["preprocess"], spec["postprocess"]
        if post.get("blank", 0) != 0 or pre["pad"].get("multiple", 32) != 32:
            raise DataError("this deployment's ocr-rec spec uses a blank index or pad multiple other than 0 / 32, "
                            "which edgeslim's ocr-rec task does not implement. Re-export it with edgeslim.")
        t = cls(charset=post["charset"], height=int(pre["resize"]["height"]), min_width=int(pre["pad"]["min_width"]),
                max_width=int(pre["resize"]["max_width"]))
        t.input_name = pre["input"]
        return t

    def samples_from(self, inputs) -> list[Line]:
        """Image paths or BGR uint8 arrays (HxWx3; HxW gray and HxWx4 BGRA are converted), one or a list."""
        return [Line(name, img, "") for name, img in images_from(inputs)]


def _bench_pattern(h: int, w: int) -> np.ndarray:
    # A deterministic textured input; latency of these models does not depend on values, only shape.
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
