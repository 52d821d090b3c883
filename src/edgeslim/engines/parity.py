"""Parity of a converted model with onnxruntime fp32 on the same inputs.

The engine side runs in a child process (a converted model that crashes the engine is a failed parity, not a dead
edgeslim). NaN/Inf in the engine's outputs fail parity whatever the other figures say: argmax can agree while
some values are NaN (reading a freed input buffer gives NaN only when the freed memory held NaN bit patterns).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..errors import InvalidParameterError
from .base import EngineError, Feeds

__all__ = ["ParityTolerance", "ParityReport", "check_parity", "compare_outputs", "tolerance_for", "save_report", "engine_outputs",
           "convert_checked", "parity_path"]

PARITY_TIMEOUT = 600.0


@dataclass(frozen=True, kw_only=True)
class ParityTolerance:
    """Bounds a conversion must meet. Parity checks the conversion; the task metric judges the precision's quality."""

    min_cosine: float = 0.999
    min_argmax: float = 0.99
    max_nonfinite: int = 0
    min_decoded_agreement: float = 0.99  # share of samples the task decodes identically (e.g. CTC text), when it can


def tolerance_for(precision: str) -> ParityTolerance:
    """Exact precisions must match closely; reduced ones only roughly (their accuracy is the task metric's job)."""
    if precision in ("fp32", "low"):
        return ParityTolerance(min_cosine=0.999, min_argmax=0.99)
    # Reduced precisions: cosine alone is dominated by easy values (a CTC model's blank frames: a collapsed int8
    # model that reads nothing scored 0.905 cosine / 0.928 per-frame argmax), so the bar is 0.99 and, where the task
    # can decode, most samples must decode to the same result.
    return ParityTolerance(min_cosine=0.99, min_argmax=0.9, min_decoded_agreement=0.75)


@dataclass
class ParityReport:
    engine: str
    precision: str
    samples: int
    max_abs_err: float
    mean_abs_err: float
    cosine_min: float
    cosine_mean: float
    argmax_agreement: float
    nonfinite: int
    passed: bool
    reason: str = ""
    tolerance: dict = field(default_factory=dict)
    decoded_agreement: float | None = None  # share of samples decoded identically (None: no decoder given)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_rows(self) -> list[list[str]]:
        return [["samples", str(self.samples)], ["max abs err", f"{self.max_abs_err:.3g}"],
                ["mean abs err", f"{self.mean_abs_err:.3g}"], ["cosine (min / mean)", f"{self.cosine_min:.6f} / {self.cosine_mean:.6f}"],
                ["argmax agreement", f"{self.argmax_agreement:.4f}"],
                ["decoded agreement", "-" if self.decoded_agreement is None else f"{self.decoded_agreement:.4f}"],
                ["NaN/Inf values", str(self.nonfinite)],
                ["passed", "yes" if self.passed else f"no: {self.reason}"]]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare_outputs(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]], *, engine: str = "?",
                    precision: str = "fp32", tolerance: ParityTolerance | None = None, decode=None) -> ParityReport:
    """Compare per-sample output lists (`ref[i][j]`: output j of sample i). Pure function: no engines involved.

    `decode(outputs) -> list of predictions` (a task's decoder, e.g. CTC greedy to text) adds the share of samples
    decoded identically, which must reach `tolerance.min_decoded_agreement`."""
    tol = tolerance or tolerance_for(precision)
    max_abs, abs_sum, n_vals, cos, agree, total, nonfinite, problems = 0.0, 0.0, 0, [], 0, 0, 0, []
    for i, (rs, gs) in enumerate(zip(ref, got)):
        if len(rs) != len(gs):
            problems.append(f"sample {i}: {len(gs)} outputs, expected {len(rs)}")
            continue
        for j, (r, g) in enumerate(zip(rs, gs)):
            r, g = np.asarray(r, np.float32), np.asarray(g, np.float32)
            if r.size != g.size:
                problems.append(f"sample {i} output {j}: shape {list(g.shape)}, expected {list(r.shape)}")
                continue
            g = g.reshape(r.shape)
            bad = ~np.isfinite(g)
            nonfinite += int(bad.sum())
            ok = ~bad
            if ok.any():
                d = np.abs(g[ok] - r[ok])
                max_abs = max(max_abs, float(d.max()))
                abs_sum += float(d.sum())
                n_vals += int(d.size)
            cos.append(_cos(np.where(ok, g, 0.0), r))
            if r.ndim >= 2 and r.shape[-1] > 1:
                agree += int((np.argmax(np.where(ok, g, -np.inf), -1) == np.argmax(r, -1)).sum())
                total += int(np.prod(r.shape[:-1]))
    n = len(ref)
    decoded = None
    if decode is not None and n:
        same = 0
        for rs, gs in zip(ref, got):
            try:
                g = [np.asarray(x, np.float32).reshape(np.shape(r)) for x, r in zip(gs, rs)]
                same += int(decode(list(rs)) == decode(g))
            except Exception:  # an output the decoder cannot read does not agree
                pass
        decoded = same / n
    argmax = agree / total if total else 1.0
    cos_min = min(cos) if cos else 0.0
    reasons = list(problems[:2])
    if nonfinite > tol.max_nonfinite:
        reasons.append(f"{nonfinite} NaN/Inf output values")
    if cos_min < tol.min_cosine:
        reasons.append(f"cosine {cos_min:.4f} < {tol.min_cosine}")
    if argmax < tol.min_argmax:
        reasons.append(f"argmax agreement {argmax:.3f} < {tol.min_argmax}")
    if decoded is not None and decoded < tol.min_decoded_agreement:
        reasons.append(f"decodes identically on {decoded:.0%} of samples < {tol.min_decoded_agreement:.0%}")
    if n == 0:
        reasons.append("no samples compared")
    return ParityReport(engine=engine, precision=precision, samples=n, max_abs_err=max_abs,
                        mean_abs_err=abs_sum / n_vals if n_vals else float("nan"), cosine_min=cos_min,
                        cosine_mean=float(np.mean(cos)) if cos else 0.0, argmax_agreement=argmax, nonfinite=nonfinite,
                        passed=not reasons, reason="; ".join(reasons), tolerance=asdict(tol), decoded_agreement=decoded)


def engine_outputs(engine: str, artifact: str, feeds_file: str, out_file: str, threads: int) -> dict:
    """Child-process side: run every feed of `feeds_file` through the engine, write outputs to `out_file`."""
    from . import get_engine

    z = np.load(feeds_file)
    n = int(z["__count__"])
    runner = get_engine(engine).load(Path(artifact), threads)
    outs = {}
    for i in range(n):
        feeds = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{i}/")}
        for j, o in enumerate(runner.run(feeds)):
            outs[f"{i}/{j}"] = np.asarray(o)
    np.savez(out_file, **outs)
    return {"samples": n}


def check_parity(onnx_model: onnx.ModelProto, engine: str, artifact: Path, feeds_list: Sequence[Feeds], threads: int = 2,
                 *, precision: str | None = None, tolerance: ParityTolerance | None = None,
                 timeout: float = PARITY_TIMEOUT, decode=None) -> ParityReport:
    """Run `feeds_list` through ORT fp32 (`onnx_model`) and through `engine` (`artifact`, in a child process); compare.

    >>> rep = check_parity(model, "ncnn", Path("m.ncnn.bin"), feeds, threads=2)  # doctest: +SKIP
    >>> rep.passed, rep.cosine_min
    """
    from . import get_engine
    from ._subprocess import call_function
    from .base import ConversionError, read_meta

    if not feeds_list:
        raise InvalidParameterError("check_parity needs at least one feed dict. Pass calibration inputs.")
    artifact = Path(artifact)
    if precision is None:
        try:
            precision = read_meta(artifact, engine).get("precision", "fp32")
        except EngineError:
            precision = "fp32"
    try:
        ref_runner = get_engine("ort").load(onnx_model.SerializeToString(), threads)
        ref = [ref_runner.run(f) for f in feeds_list]
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InvalidParameterError(f"the reference run (onnxruntime fp32) fails on these inputs ({first}). "
                                    "Check that --task and --data match the model.") from None
    with tempfile.TemporaryDirectory(prefix="edgeslim-parity-") as d:
        d = Path(d)
        arrays = {"__count__": np.array(len(feeds_list))}
        for i, f in enumerate(feeds_list):
            for k, v in f.items():
                arrays[f"{i}/{k}"] = np.asarray(v)
        np.savez(d / "feeds.npz", **arrays)
        try:
            call_function("edgeslim.engines.parity:engine_outputs", {
                "engine": engine, "artifact": str(artifact.resolve()), "feeds_file": str(d / "feeds.npz"),
                "out_file": str(d / "outs.npz"), "threads": int(threads)}, timeout, d, f"{engine} runtime")
        except ConversionError as e:
            tol = tolerance or tolerance_for(precision)
            return ParityReport(engine=engine, precision=precision, samples=0, max_abs_err=float("nan"),
                                mean_abs_err=float("nan"), cosine_min=0.0, cosine_mean=0.0, argmax_agreement=0.0,
                                nonfinite=0, passed=False, reason=str(e).rstrip("."), tolerance=asdict(tol))
        z = np.load(d / "outs.npz")
        got = [[z[f"{i}/{j}"] for j in range(len(ref[i])) if f"{i}/{j}" in z.files] for i in range(len(feeds_list))]
    return compare_outputs(ref, got, engine=engine, precision=precision, tolerance=tolerance, decode=decode)


def _plain(v):
    return None if isinstance(v, float) and not np.isfinite(v) else v


def save_report(report: ParityReport, path: Path, extra: dict | None = None) -> Path:
    """Write the report as strict JSON (NaN figures become null)."""
    d = {k: _plain(v) for k, v in report.to_dict().items()}
    Path(path).write_text(json.dumps({**d, **(extra or {})}, indent=1))
    return Path(path)


def parity_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".parity.json")


def convert_checked(model: onnx.ModelProto, engine: str, out: Path, *, precision: str = "fp32",
                    calib_feeds: Sequence[Feeds] | None = None, parity_feeds: Sequence[Feeds], threads: int = 2,
                    tolerance: ParityTolerance | None = None, decode=None, force: bool = False) -> tuple[Path, ParityReport]:
    """Convert `model` for `engine` at `precision`, check parity with ORT fp32, store it beside the artifact.

    The conversion is written into a temp folder beside `out` and moved into place only when parity passes, so no
    unchecked artifact is ever left where the user asked for the model. A failing parity raises `ParityError` and
    leaves only `<out>.parity.json` (the figures, for diagnosis); a converter crash raises `ConversionError`.
    `decode` (a task's decoder) adds decoded agreement to parity (CTC text for OCR recognizers).
    """
    import os
    import shutil

    from . import get_engine
    from .base import ParityError

    eng = get_engine(engine)
    eng.check_precision(precision)
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise InvalidParameterError(f"-o {out}: a folder of that name exists. Pass a file name, e.g. model{eng.suffix}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        art = eng.convert(model, tmp / out.name, precision=precision, calib_feeds=calib_feeds)
        rep = check_parity(model, engine, art, list(parity_feeds), threads, precision=precision, tolerance=tolerance,
                           decode=decode)
        save_report(rep, parity_path(art), {"artifact": out.name, "size_bytes": eng.size_bytes(art)})
        if not rep.passed:
            # an existing, checked model keeps its own parity file; the failed figures go beside it
            failed = parity_path(out) if not out.exists() else out.with_name(out.name + ".failed.parity.json")
            os.replace(parity_path(art), failed)
            raise ParityError(f"{engine}/{precision} output disagrees with onnxruntime fp32 ({rep.reason}); "
                              f"details in {failed.name}; no model was written. Use another precision or engine.")
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        clash = [out.parent / p.name for p in files if (out.parent / p.name).exists()]
        if clash and not force:
            raise InvalidParameterError(f"-o {out}: {clash[0].name} exists. Pass another name, or --force to replace it.")
        for p in files:
            os.replace(p, out.parent / p.name)
        return out, rep
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
