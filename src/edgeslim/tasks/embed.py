"""Sentence embeddings (a BERT-style encoder with pooling inside the graph). Metric: Spearman of cosine similarity.

Data: a TSV of sentence pairs with gold similarity scores, either the STS Benchmark layout (genre, file, year, id,
score, sentence 1, sentence 2[, source 1, source 2]) or three fields `sentence1<TAB>sentence2<TAB>score`. Rows are
split on TAB only: STS sentences hold bare quotes, which a CSV reader would take as field quoting.

The model takes `input_ids` and `attention_mask` (int64, [batch, sequence], both dynamic) and returns one embedding
per sentence ([batch, dim]); `edgeslim.research.train.theseus.export_onnx` writes such models. Tokenization is part of the
task: the tokenizer (a Hugging Face `tokenizer.json`) travels inside the ONNX file's metadata under
`edgeslim.tokenizer`, so a model file alone can be optimized and deployed; `EmbedTask(tokenizer=path)` overrides it.

The metric is the Spearman rank correlation between the cosine similarity of each pair's embeddings and the gold
score (how sentence encoders are scored on STS). Fidelity needs no labels: the cosine between each candidate
embedding and the fp32 model's embedding of the same sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Batch, Task

__all__ = ["EmbedTask", "Pair", "read_pairs", "spearman", "cosine_rows", "TOKENIZER_KEY", "EXACT_COSINE"]

TOKENIZER_KEY = "edgeslim.tokenizer"  # ONNX metadata_props key holding the tokenizer.json text
# An embedding counts as "the same" as fp32 when its cosine to the fp32 embedding reaches this (int8 of MiniLM
# lands around 0.99-0.999 per sentence; fp16 above 0.99999).
EXACT_COSINE = 0.99
# A baseline this weakly correlated with the gold scores means the wrong tokenizer or pooling, not a weak encoder
# (even averaged word embeddings score ~0.5 on STS-B).
BASELINE_SPEARMAN_LIMIT = 0.1


@dataclass
class Pair:
    a: str
    b: str
    score: float  # gold similarity (NaN when unlabelled)


def read_pairs(path: Path) -> list[Pair]:
    """Sentence pairs from an STS-style TSV (7 or 9 fields) or `s1<TAB>s2<TAB>score`; a bad row is a `DataError`
    naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: data file not found. Pass --data with a TSV of sentence pairs (STS-B layout or "
                        "'sentence1<TAB>sentence2<TAB>score').")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start}). Save the pairs file as UTF-8.") from None
    pairs = []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) >= 7:
            score, a, b = f[4], f[5], f[6]
        elif len(f) == 3:
            a, b, score = f
        else:
            raise DataError(f"{p}:{k}: {len(f)} TAB-separated fields; expected 7 or 9 (STS-B layout) or 3 "
                            "(sentence1, sentence2, score). Fix the line.")
        try:
            s = float(score)
        except ValueError:
            raise DataError(f"{p}:{k}: score {score.strip()[:20]!r} is not a number. Fix the line "
                            "(or remove a header row).") from None
        if not a.strip() or not b.strip():
            raise DataError(f"{p}:{k}: an empty sentence. Fix or remove the line.")
        pairs.append(Pair(a.strip(), b.strip(), s))
    if len(pairs) < 4:
        raise DataError(f"{p}: {len(pairs)} sentence pair(s). Provide at least 4 (some calibrate, the rest evaluate).")
    return pairs


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN when either side is constant or non-finite.

    Own NumPy version: scipy is not a core dependency, and this is ten lines (tests check it against scipy).
    """
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / den) if den > 0 else float("nan")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [n, d] arrays; a zero row against a zero row is 1, against a non-zero row 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = dot / (na * nb)
    c = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, c))
    return np.where(np.isfinite(c), c, 0.0)


def _tokenizer_from(text: str, where: str):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:
        raise DataError(f"{where}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:120]}). "
                        "Pass the tokenizer.json saved with the model.") from None
    return tok


@register_task("embed")
class EmbedTask(Task):
    """Tokenize (WordPiece from the model's tokenizer.json), feed `input_ids` + `attention_mask` padded to the longest
    sentence of the batch, read one embedding per sentence; score Spearman(cosine, gold)."""

    name = "embed"
    metric_name = "spearman"
    higher_is_better = True
    default_budget = 0.01  # one Spearman point (x100): int8 of MiniLM stays within 0.5

    def __init__(self, tokenizer: str | Path | None = None, max_length: int | None = None, calib_size: int = 32,
                 eval_limit: int | None = None, bench_batch: int = 1) -> None:
        self.tokenizer_path = Path(tokenizer) if tokenizer is not None else None
        self.max_length, self.calib_size, self.eval_limit, self.bench_batch = max_length, calib_size, eval_limit, bench_batch
        self.input_names: list[str] = ["input_ids", "attention_mask"]
        self.tokenizer_json: str | None = None
        self._tok = None
        if self.tokenizer_path is not None:
            if not self.tokenizer_path.is_file():
                raise DataError(f"{self.tokenizer_path}: tokenizer file not found. Pass the model's tokenizer.json.")
            self._set_tokenizer(self.tokenizer_path.read_text(encoding="utf-8"), str(self.tokenizer_path))

    def _set_tokenizer(self, text: str, where: str) -> None:
        tok = _tokenizer_from(text, where)
        trunc = json.loads(text).get("truncation") or {}
        self.max_length = int(self.max_length or trunc.get("max_length") or 128)
        tok.no_padding()  # the task pads each batch to its own longest sentence (dynamic sequence length)
        tok.enable_truncation(self.max_length)
        self.tokenizer_json, self._tok = text, tok
        self.pad_id = tok.token_to_id("[PAD]") if tok.token_to_id("[PAD]") is not None else 0

    def bind(self, model) -> "EmbedTask":
        inits = {t.name for t in model.graph.initializer}
        names = [i.name for i in model.graph.input if i.name not in inits]
        missing = [n for n in ("input_ids", "attention_mask") if n not in names]
        if missing:
            raise DataError(f"the embed task feeds input_ids and attention_mask; the model's inputs are {names}. "
                            "Export the encoder with edgeslim.research.train.theseus.export_onnx (or `edgeslim theseus`).")
        self.input_names = names
        if self._tok is None:
            meta = {p.key: p.value for p in model.metadata_props}
            if TOKENIZER_KEY not in meta:
                raise DataError("the model carries no tokenizer (ONNX metadata 'edgeslim.tokenizer'). Export it with "
                                "`edgeslim theseus` / edgeslim.research.train.theseus.export_onnx, or pass EmbedTask(tokenizer=...).")
            self._set_tokenizer(meta[TOKENIZER_KEY], "the model's edgeslim.tokenizer metadata")
        return self

    def _need_tokenizer(self):
        if self._tok is None:
            raise DataError("the embed task has no tokenizer yet: bind it to a model (or pass tokenizer=...) first.")
        return self._tok

    def load(self, data: Path | None) -> tuple[list[Pair], list[Pair]]:
        if data is None:
            raise DataError("the embed task needs --data FILE.tsv: sentence pairs with gold scores (STS-B layout or "
                            "'sentence1<TAB>sentence2<TAB>score').")
        pairs = read_pairs(Path(data))
        k = min(self.calib_size, len(pairs) // 2)
        ev = pairs[k:]
        if self.eval_limit:
            ev = ev[: self.eval_limit]
        return pairs[:k], ev

    def encode(self, sentences: list[str]) -> dict[str, np.ndarray]:
        """Feeds for a list of sentences, padded to the longest (int64 ids and mask)."""
        enc = self._need_tokenizer().encode_batch(list(sentences))
        n = max(len(e.ids) for e in enc)
        ids = np.full((len(enc), n), self.pad_id, np.int64)
        mask = np.zeros((len(enc), n), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds

    def lengths(self, sentences: list[str]) -> list[int]:
        """Token counts (with [CLS]/[SEP], after truncation)."""
        return [len(e.ids) for e in self._need_tokenizer().encode_batch(list(sentences))]

    def batches(self, samples: list[Pair], batch_size: int = 8) -> Iterator[Batch]:
        """`batch_size` pairs per batch: 2 x batch_size sentences (a, b of each pair in turn)."""
        for s in range(0, len(samples), batch_size):
            chunk = list(range(s, min(s + batch_size, len(samples))))
            sents = [x for i in chunk for x in (samples[i].a, samples[i].b)]
            yield Batch(self.encode(sents), chunk)

    def decode(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """One [2, dim] array per pair (the embeddings of its two sentences)."""
        e = np.asarray(outputs[0], np.float32)
        e = e.reshape(e.shape[0], -1)
        return [e[i : i + 2] for i in range(0, e.shape[0], 2)]

    def similarities(self, preds: list[np.ndarray]) -> np.ndarray:
        return cosine_rows(np.stack([p[0] for p in preds]), np.stack([p[1] for p in preds])) if preds else np.zeros(0)

    def score(self, preds: list[np.ndarray], samples: list[Pair], reference: list | None = None) -> dict[str, float]:
        gold = np.array([s.score for s in samples], np.float64)
        out = {"metric": spearman(self.similarities(preds), gold)}
        if reference is not None:
            c = self._cos_to(preds, reference)
            out.update(cosine_to_fp32=float(c.mean()), min_cosine_to_fp32=float(c.min()))
        return out

    def _cos_to(self, preds: list[np.ndarray], ref: list[np.ndarray]) -> np.ndarray:
        if not preds:
            return np.ones(0)
        if any(np.shape(p) != np.shape(r) for p, r in zip(preds, ref)):
            return np.zeros(len(preds))
        return cosine_rows(np.concatenate(preds), np.concatenate(ref))

    def fidelity(self, preds: list[np.ndarray], ref_preds: list[np.ndarray]) -> dict[str, float]:
        """`exact_match`: share of sentences whose embedding has cosine >= EXACT_COSINE to fp32's; `metric_vs_fp32`:
        1 - mean cosine; `cosine_to_fp32`: the mean cosine itself."""
        c = self._cos_to(preds, ref_preds)
        if c.size == 0:
            return {"exact_match": 1.0, "metric_vs_fp32": 0.0, "cosine_to_fp32": 1.0}
        return {"exact_match": float((c >= EXACT_COSINE).mean()), "metric_vs_fp32": float(1.0 - c.mean()),
                "cosine_to_fp32": float(c.mean())}

    def bench_feeds(self, samples: list[Pair]) -> dict[str, np.ndarray]:
        """`bench_batch` real sentences around the data's median token length (batch 1: the median sentence)."""
        sents = [x for s in samples for x in (s.a, s.b)]
        lens = np.asarray(self.lengths(sents))
        order = np.argsort(lens, kind="stable")
        n = min(self.bench_batch, len(sents))
        mid = len(order) // 2
        lo = max(0, min(mid - n // 2, len(order) - n))
        return self.encode([sents[i] for i in order[lo : lo + n]])

    def baseline_problem(self, metric: float, n_eval: int) -> str | None:
        if np.isfinite(metric) and metric > BASELINE_SPEARMAN_LIMIT:
            return None
        return (f"baseline Spearman {metric:.3f} on {n_eval} pairs: the embeddings do not track the gold scores. "
                "Check that the model pools and normalises inside the graph and that its tokenizer is the one it "
                "was trained with.")

    # ---- deployment -----------------------------------------------------------------------------------------

    def deploy_spec(self) -> dict:
        return {
            "name": self.name,
            "preprocess": {"inputs": list(self.input_names), "tokenizer": "huggingface tokenizer.json",
                           "tokenizer_json": self.tokenizer_json, "max_length": self.max_length,
                           "padding": "right, to the longest sentence of the batch, pad id "
                                      f"{getattr(self, 'pad_id', 0)}; attention_mask 1 on tokens, 0 on padding"},
            "postprocess": {"type": "embedding", "output": 0,
                            "similarity": "cosine (the model's embeddings are L2-normalised inside the graph)"},
        }

    @classmethod
    def from_deploy_spec(cls, spec: dict) -> "EmbedTask":
        pre = spec["preprocess"]
        t = cls(max_length=pre.get("max_length"))
        t.input_names = list(pre.get("inputs") or t.input_names)
        if pre.get("tokenizer_json"):
            t._set_tokenizer(pre["tokenizer_json"], "deploy.json")
        return t

    def samples_from(self, inputs: Any) -> list[str]:
        """A sentence or a list of sentences."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(s, str) for s in inputs) or not inputs:
            raise DataError("embed inputs are a sentence or a non-empty list of sentences (str).")
        return list(inputs)

    def predict(self, runner, inputs: Any) -> np.ndarray:
        """Embeddings, one row per sentence, [n, dim] (batches of 16 sentences, each padded to its longest)."""
        sents = self.samples_from(inputs)
        out = [np.asarray(runner.run(self.encode(sents[i : i + 16]))[0], np.float32) for i in range(0, len(sents), 16)]
        return np.concatenate(out)
