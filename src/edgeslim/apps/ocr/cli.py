"""`edgeslim ocr`: read every text line of photos (thin wrapper over `OcrPipeline`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["command"]


def command(
    images: list[str] = typer.Argument(..., help="Image files or folders of images."),
    models: str = typer.Option("zoo", "--models", help="zoo (PP-OCRv4 det + cls + rec) or a folder written by "
                                                       "`edgeslim optimize ocr-pipeline`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image: lines with quad, text, score."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Write the photos with boxes and text: a file (.png/.jpg) "
                                                             "for one image, else a folder."),
    det_limit: Optional[str] = typer.Option(None, "--det-limit", help="Detector input size: 960 or max:960 (longer side "
                                                                      "at most 960, the default), min:736 (RapidOCR's)."),
    no_cls: bool = typer.Option(False, "--no-cls", help="Skip the angle classifier (lines are never upside down)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads per model [default: the folder's, else 2]."),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="Thread-pool policy: dedicated | shared."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --draw output."),
) -> None:
    """Detect, orient and read every text line of photos (Chinese and English); prints quad, score and text."""
    from dataclasses import replace

    from ...errors import InvalidParameterError
    from ...outdir import OutputDir, atomic_write_file, check_output_file
    from .pipeline import IMAGE_SUFFIXES, OcrPipeline, list_images, load_image, parse_det_limit

    if threads is not None and threads < 1:
        raise InvalidParameterError(f"--threads {threads} is not valid: give 1 or more.")
    files = list_images(images)
    for f in files:  # every input decodes and has a usable size before a model loads or a file is written
        load_image(f)
    one_file = draw is not None and len(files) == 1 and draw.suffix.lower() in IMAGE_SUFFIXES
    if draw is not None:  # refused before any work, never half written
        if one_file:
            check_output_file(draw, force=force, inputs=tuple(files), option="--draw")
        else:
            OutputDir(draw, force=force, inputs=tuple(files), option="--draw").check()
    pipe = OcrPipeline.load(models, threads=threads, policy=cpu)
    cfg = pipe.config
    if det_limit is not None:
        cfg = replace(cfg, det_resize=parse_det_limit(det_limit))
    if no_cls:
        cfg = replace(cfg, use_cls=False)
    pipe.config = cfg
    results, pictures = [], []
    for f in files:
        img, name = load_image(f)
        res = pipe.read_array(img, name)
        results.append(res)
        if draw is not None:
            from .draw import draw_result

            pictures.append((f, draw_result(img, res)))
    if draw is not None:
        import cv2

        def write(path: Path, pic, suffix: str = ".png") -> None:
            ok, buf = cv2.imencode(suffix, pic)
            Path(path).write_bytes(buf.tobytes())

        if one_file:
            atomic_write_file(draw, lambda tmp: write(tmp, pictures[0][1], draw.suffix.lower()), force=force,
                              inputs=tuple(files), option="--draw")
        else:
            with OutputDir(draw, force=force, inputs=tuple(files), option="--draw") as od:
                seen: set[str] = set()
                for f, pic in pictures:
                    stem = f.stem if f.stem not in seen else f"{f.stem}_{len(seen)}"
                    seen.add(stem)
                    write(od.tmp / f"{stem}.png", pic)
                od.commit()
    if as_json:
        for r in results:
            typer.echo(json.dumps(r.to_dict(), ensure_ascii=False))
        return
    for r in results:
        if not r.lines:
            typer.echo(f"{r.source}\t-\t-\t(no text found)")
        for l in r.lines:
            typer.echo(f"{r.source}\t{','.join(str(v) for p in l.quad for v in p)}\t{l.score:.3f}\t{l.text}")


def optimize_command(opts: dict, as_json: bool = False, command: list[str] | None = None) -> None:
    """`edgeslim optimize ocr-pipeline`: the three stage studies and the end-to-end comparison, written atomically
    into the output folder; renders a table (or prints pipeline.json with --json)."""
    import sys

    from ...console import Progress as _Progress
    from ...console import table as _table
    from ...outdir import OutputDir
    from .optimize import optimize_pipeline

    with OutputDir(opts["outdir"], force=bool(opts["force"]), inputs=(opts.get("data"),), option="-o") as od:
        with _Progress(enabled=not as_json and sys.stderr.isatty()) as prog:
            res = optimize_pipeline(opts, od.tmp, progress=prog, command=command)
        out = od.commit()
    if as_json:
        typer.echo((out / "pipeline.json").read_text(encoding="utf-8"))
        return

    from ...console import stdout

    con = stdout()
    spec = res.spec
    con.print(_table("ocr-pipeline: each stage under its own budget", ["stage", "selected", "metric", "speedup", "MB"],
                     [[s, str(r["selected"]), f"{r['metric']['name']} {r['metric']['baseline']:.4f} -> {r['metric']['selected']:.4f}",
                       f"{(r['speedup'] or 1.0):.2f}x", f"{r['bytes'] / 1e6:.2f}"] for s, r in spec["stages"].items()]))
    e = spec["e2e"]
    con.print(_table(f"end to end on {e['photos']} photos", ["pipeline", "CER", "hmean", "s per pass", "speedup"],
                     [[n, f"{e[n]['cer']:.4f}", f"{e[n]['hmean']:.4f}", f"{e['timing'][n]['median_s']:.3f}",
                       f"{e['timing'][n]['speedup']:.2f}x"] for n in ("original", "optimized")]))
    if e.get("det_choice"):
        con.print(e["det_choice"] + ".")
    con.print(f"models {spec['total_bytes'] / 1e6:.2f} MB (original {spec['original_total_bytes'] / 1e6:.2f} MB)  ->  {out}/  "
              f"({res.seconds:.0f} s). Run it: edgeslim ocr --models {out} PHOTO")
