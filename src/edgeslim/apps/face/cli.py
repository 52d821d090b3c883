"""`edgeslim face detect | antispoof | beautify`: thin wrappers over `yunet`, `antispoof` and `beauty`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ...errors import DataError, InvalidParameterError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Faces on a CPU: YuNet detection with 5 landmarks, HyperFAS anti-spoofing, beautification.")

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm"}

_MODEL_HELP = "YuNet: a zoo name (yunet-s-dynamic, yunet-s, yunet-n), an .onnx file or an `edgeslim optimize` output folder."
_DIR_HELP = "Folder holding pre-fetched weights (else the cache, else a download checked by sha256)."


def _detector(model: str, models_dir: Optional[Path], threads: int, score: float = 0.6):
    from ...zoo import model_path
    from .yunet import YunetConfig, YunetDetector

    cfg = YunetConfig(score_threshold=score)
    cfg.validate()
    p = model_path(model, local_dir=models_dir)
    if not p.exists():
        raise InvalidParameterError(f"--model {model}: no such file, folder or zoo model. Pass a YuNet .onnx, an "
                                    "optimize output folder, or one of: yunet-s-dynamic, yunet-s, yunet-n.")
    return YunetDetector.from_model(p, threads=threads, config=cfg)


def _images(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"{path}: not found. Pass an image file or a folder of images.")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXT and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no images (png/jpg/bmp/webp) in this folder. Pass a folder of photos.")
        return files
    return [path]


def _write_image(out: Path, img, force: bool, inputs: tuple) -> None:
    import cv2

    from ...outdir import atomic_write_file

    ext = out.suffix.lower() or ".png"
    if ext not in IMAGE_EXT:
        raise InvalidParameterError(f"{out}: unknown image type {ext!r}. Name the output .png or .jpg.")

    def write(tmp: Path) -> None:
        ok, buf = cv2.imencode(ext, img)
        if not ok:
            raise DataError(f"{out}: OpenCV cannot encode {ext}. Use .png or .jpg.")
        Path(tmp).write_bytes(buf.tobytes())

    atomic_write_file(out, write, force=force, inputs=inputs)


@app.command()
def detect(
    paths: list[Path] = typer.Argument(..., help="Images or folders of images (as edgeslim ocr and run take them)."),
    model: str = typer.Option("yunet-s-dynamic", "--model", help=_MODEL_HELP),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=_DIR_HELP),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Write the image with boxes and landmarks drawn (a folder "
                                        "when PATH is a folder); with one PATH only."),
    score: float = typer.Option(0.6, "--score-threshold", help="Keep faces scoring at least this (0..1)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --draw output."),
    as_json: bool = typer.Option(False, "--json", help="Print faces as JSON (box x y w h, score, 5 landmarks)."),
) -> None:
    """Detect faces and their 5 landmarks (eyes, nose tip, mouth corners) with YuNet."""
    import contextlib

    import cv2

    from ...outdir import OutputDir, check_output_file
    from ...tasks.base import read_image
    from .yunet import draw_faces

    if draw is not None and len(paths) > 1:
        raise InvalidParameterError(f"--draw takes one image or one folder; got {len(paths)} paths. Pass one PATH with "
                                    "--draw, or leave --draw out.")
    path = paths[0]
    files = [f for p in paths for f in _images(p)]
    if draw is not None and not path.is_dir():
        check_output_file(draw, force=force, inputs=(path,), option="--draw")
        if draw.suffix.lower() not in IMAGE_EXT:
            raise InvalidParameterError(f"--draw {draw}: unknown image type {draw.suffix!r}. Name it .png or .jpg.")
    det = _detector(model, models_dir, threads, score)
    results = []
    # a folder of drawings is written into a temp folder and swapped in at the end: no partial output on failure
    folder = OutputDir(draw, force=force, inputs=(path,), option="--draw") if draw is not None and path.is_dir() else None
    with folder if folder is not None else contextlib.nullcontext():
        for f in files:
            img = read_image(f)
            faces = det.detect(img)
            results.append({"image": str(f), "faces": [x.to_dict() for x in faces]})
            if folder is not None:
                dst = folder.tmp / f.relative_to(path).with_suffix(".jpg")
                dst.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(dst), draw_faces(img, faces))
            elif draw is not None:
                _write_image(draw, draw_faces(img, faces), force, (path,))
        if folder is not None:
            folder.commit()
    if as_json:
        typer.echo(json.dumps(results if (path.is_dir() or len(paths) > 1) else results[0]))
        return
    for r in results:
        if not r["faces"]:
            typer.echo(f"{r['image']}\tno face found (score >= {score})")
        for k, fc in enumerate(r["faces"]):
            x, y, w, h = fc["box"]
            typer.echo(f"{r['image']}\tface {k}\tscore {fc['score']:.3f}\tbox {x:.0f},{y:.0f},{w:.0f},{h:.0f}")


@app.command()
def antispoof(
    image: Path = typer.Argument(..., help="A photo with a face."),
    model: str = typer.Option("yunet-s-dynamic", "--model", help=_MODEL_HELP),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=_DIR_HELP),
    fas_model: Optional[Path] = typer.Option(None, "--fas-model", help="HyperFAS fas.h5 [default: the zoo's `hyperfas`]."),
    threshold: float = typer.Option(0.95, "--threshold", help="Scores above this are a live face (HyperFAS uses 0.95)."),
    threads: int = typer.Option(2, "--threads", min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score each face as live or spoof (a photo of a screen or a print): detect -> crop 1.2x -> HyperFAS."""
    from ...tasks.base import read_image
    from .antispoof import AntiSpoof

    img = read_image(image)
    det = _detector(model, models_dir, threads)
    fas = AntiSpoof.from_h5(fas_model, threads=threads, threshold=threshold) if fas_model else \
        AntiSpoof.from_zoo(local_dir=models_dir, threads=threads, threshold=threshold)
    faces = det.detect(img)
    res = fas.score_faces(img, faces)
    if as_json:
        typer.echo(json.dumps({"image": str(image), "faces": [r.to_dict() for r in res]}))
    if not res:
        typer.echo(f"{image}: no face found; nothing to score. Pass a photo showing a face.", err=True)
        raise typer.Exit(1)
    if not as_json:
        for k, r in enumerate(res):
            typer.echo(f"{image}\tface {k}\tscore {r.score:.4f}\t{'real' if r.real else 'fake'} (threshold {threshold})")


@app.command()
def beautify(
    src: Path = typer.Argument(..., help="An image (.jpg/.png) or a video (.mp4)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output image or .mp4 video."),
    smooth: float = typer.Option(0.6, "--smooth", help="Skin smoothing 0..1."),
    slim: float = typer.Option(0.3, "--slim", help="Face slimming 0..1."),
    whiten_: float = typer.Option(0.3, "--whiten", help="Skin whitening 0..1."),
    eyes: float = typer.Option(0.2, "--eyes", help="Eye enlarging 0..1."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a side-by-side before/after image "
                                                               "(for a video: its first frame with a face)."),
    model: str = typer.Option("yunet-s-dynamic", "--model", help=_MODEL_HELP),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=_DIR_HELP),
    threads: int = typer.Option(2, "--threads", min=1),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs."),
) -> None:
    """Skin smoothing, whitening, face slimming and eye enlarging on a photo or a video (faces tracked)."""
    import os

    from ...outdir import atomic_write_file, check_output_file
    from ...tasks.base import read_image
    from .beauty import BeautyConfig, Beautifier, beautify_video, side_by_side

    cfg = BeautyConfig(smooth=smooth, slim=slim, whiten=whiten_, eyes=eyes)
    cfg.validate()
    is_video = src.suffix.lower() in VIDEO_EXT
    if not src.exists():
        raise DataError(f"{src}: not found. Pass an image or an .mp4 video.")
    if is_video and out.suffix.lower() != ".mp4":
        raise InvalidParameterError(f"-o {out}: a video input writes a video; name the output .mp4.")
    if not is_video and out.suffix.lower() not in IMAGE_EXT:
        raise InvalidParameterError(f"-o {out}: an image input writes an image; name the output .png or .jpg.")
    check_output_file(out, force=force, inputs=(src,))
    if preview is not None:
        check_output_file(preview, force=force, inputs=(src, out), option="--preview")
    det = _detector(model, models_dir, threads)
    beauty = Beautifier(det, cfg)
    if not is_video:
        img = read_image(src)
        res, n = beauty.apply(img)
        if n == 0:
            typer.echo(f"{src}: no face found; nothing written. Pass a photo showing a face.", err=True)
            raise typer.Exit(1)
        _write_image(out, res, force, (src,))
        if preview is not None:
            _write_image(preview, side_by_side(img, res), force, (src, out))
        typer.echo(f"{out}: {n} face(s) beautified")
        return
    shots: list = []
    holder: dict = {}

    def write_video(tmp: Path) -> None:
        # cv2.VideoWriter picks the container from the suffix: write to a .mp4 name, then hand it over
        tmp_mp4 = Path(str(tmp) + ".mp4")
        try:
            holder["stats"] = beautify_video(beauty, src, tmp_mp4, preview=lambda b, a: shots.append(side_by_side(b, a)))
            os.replace(tmp_mp4, tmp)
        finally:
            if tmp_mp4.exists():
                tmp_mp4.unlink()

    atomic_write_file(out, write_video, force=force, inputs=(src,))
    st = holder["stats"]
    if preview is not None and shots:
        _write_image(preview, shots[0], force, (src, out))
    msg = (f"{out}: {st.frames} frames {st.width}x{st.height}, a face in {st.frames_with_face}, detector run "
           f"{st.detections} times; processing {st.fps:.1f} frames/s (decode and encode excluded)")
    typer.echo(msg)
    if st.frames_with_face == 0:
        typer.echo(f"{src}: no face found in any frame; the video was copied unchanged.", err=True)
