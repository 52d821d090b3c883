"""`edgeslim objectron IMAGE`: a thin wrapper over `ObjectronDetector` and `draw_boxes`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ...errors import DataError, InvalidParameterError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def command(
    image: Path = typer.Argument(..., help="A photo (png/jpg/bmp/webp)."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Write the photo with each 3D box's edges drawn (.png or .jpg)."),
    as_json: bool = typer.Option(False, "--json", help="Print the boxes as JSON: score, keypoints, rotation, "
                                 "translation and dimensions (up to scale), projected points."),
    models: Optional[Path] = typer.Option(None, "--models", help="Folder holding objectron_chair_640x480_int8.tflite (else "
                                          "the cache, else a download checked by sha256)."),
    threshold: float = typer.Option(0.6, "--threshold", help="Keep objects whose belief peak is at least this (0..1)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Interpreter threads."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --draw output."),
) -> None:
    """Find chairs and their 3D boxes (MediaPipe Objectron): rotation, translation up to scale, projected corners."""
    from ...outdir import atomic_write_file, check_output_file
    from ...tasks.base import read_image
    from .decode import DecodeConfig
    from .detector import ObjectronConfig, ObjectronDetector, draw_boxes
    from .lift import camera_matrix

    if models is not None and not models.is_dir():
        raise InvalidParameterError(f"--models {models}: no such folder. Pass the folder holding "
                                    "objectron_chair_640x480_int8.tflite, or leave --models out to use the cache.")
    if image.exists() and image.is_dir():
        raise DataError(f"{image}: a folder, not an image. Pass one photo (png/jpg/bmp/webp).")
    if draw is not None:
        check_output_file(draw, force=force, inputs=(image,), option="--draw")
        if draw.suffix.lower() not in IMAGE_EXT:
            raise InvalidParameterError(f"--draw {draw}: unknown image type {draw.suffix!r}. Name it .png or .jpg.")
    if not 0.0 < threshold <= 1.0:
        raise InvalidParameterError(f"--threshold {threshold}: give a belief in (0, 1], e.g. 0.6.")
    cfg = ObjectronConfig(decode=DecodeConfig(threshold=threshold, voting_threshold=min(0.2, threshold)))
    cfg.validate()
    img = read_image(image)
    det = ObjectronDetector.from_zoo(local_dir=models, threads=threads, config=cfg)
    boxes = det.detect(img)
    if draw is not None:
        import cv2

        def write(tmp: Path) -> None:
            ok, buf = cv2.imencode(draw.suffix.lower(), draw_boxes(img, boxes))
            if not ok:
                raise DataError(f"--draw {draw}: OpenCV cannot encode {draw.suffix}. Use .png or .jpg.")
            Path(tmp).write_bytes(buf.tobytes())

        atomic_write_file(draw, write, force=force, option="--draw", inputs=(image,))
    if as_json:
        h, w = img.shape[:2]
        typer.echo(json.dumps({"image": str(image), "width": w, "height": h,
                               "camera": camera_matrix(w, h, cfg.fov_deg).round(3).tolist(),
                               "objects": [b.to_dict() for b in boxes]}))
        return
    if not boxes:
        typer.echo(f"{image}\tno chair found (belief >= {threshold})")
    for k, b in enumerate(boxes):
        p = b.pose
        x1, y1 = p.projected[1:].min(axis=0)
        x2, y2 = p.projected[1:].max(axis=0)
        dims = "x".join(f"{v:.2f}" for v in p.dimensions)
        typer.echo(f"{image}\tchair {k}\tscore {b.score:.3f}\tbox {x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}\t"
                   f"size {dims}\tdistance {p.translation[2]:.2f} (box lengths)")
