"""`edgeslim convert`: a typer command over `edgeslim.engines.parity.convert_checked` (mounted by the main CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["convert"]


def convert(
    model: str = typer.Argument(..., help="ONNX model path or zoo name."),
    to: str = typer.Option(..., "--to", help="Engine: mnn | ncnn (| ort)."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="mnn: fp32 low bf16 w8 w4 int8; ncnn: fp32 bf16 fp16 int8 int8-bf16."),
    out: Path = typer.Option(..., "-o", "--out", help="Output file (.mnn, or .ncnn.bin with .ncnn.param beside it)."),
    task: str = typer.Option("ocr-rec", "--task", help="Task whose calibration inputs feed int8 and the parity check."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder or .npz for the task (default: bundled)."),
    calib: int = typer.Option(64, "--calib", help="Calibration inputs for int8 precisions."),
    samples: int = typer.Option(8, "--parity-samples", help="Calibration inputs compared with onnxruntime fp32."),
    threads: int = typer.Option(2, "--threads", min=1, help="Threads for the engine."),
    force: bool = typer.Option(False, "--force", help="Replace existing output files."),
) -> None:
    """Convert a model for an on-device engine and check parity with onnxruntime fp32 (stored as OUT.parity.json)."""

    from ..errors import InvalidParameterError
    from ..model import load_onnx
    from ..tasks import get_task
    from ..zoo import model_path
    from . import get_engine
    from .parity import convert_checked, parity_path

    if samples < 1 or calib < 1:
        raise InvalidParameterError("--parity-samples and --calib must be 1 or more. Pass e.g. --parity-samples 8.")
    eng = get_engine(to)
    eng.check_precision(precision)
    path = model_path(model)
    from ..outdir import check_output_file

    check_output_file(out, force=force, inputs=(path,))  # before any work
    m = load_onnx(path)
    t = get_task(task).bind(m)
    calib_samples, _ = t.load(data)
    if not calib_samples:
        raise InvalidParameterError("the data has no calibration inputs. Provide more samples with --data.")
    feeds = [b.feeds for b in t.batches(calib_samples[: max(calib, samples)], 1)]
    from ..console import stdout

    con = stdout()
    with con.status(f"converting to {to}/{precision} and checking parity"):
        try:
            art, rep = convert_checked(m, to, out, precision=precision, calib_feeds=feeds[:calib],
                                       parity_feeds=feeds[:samples], threads=threads, force=force,
                                       decode=t.decode if task == "ocr-rec" else None)  # CTC: text must agree
        except Exception:
            p = parity_path(Path(out))
            if p.exists():
                con.print(p.read_text())
            raise
    from rich.table import Table

    tab = Table(title=f"parity of {to}/{precision} vs onnxruntime fp32")
    tab.add_column("check")
    tab.add_column("value")
    for r in rep.to_rows():
        tab.add_row(*r)
    con.print(tab)
    files = ", ".join(str(p) for p in eng.artifact_files(art))
    con.print(f"wrote {files} ({eng.size_bytes(art) / 1e6:.2f} MB); parity in {parity_path(art)}")
