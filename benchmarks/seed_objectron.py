"""Objectron on a CPU: does the chair model find the chairs of its demo photo inside their 3D boxes, and how long do
the model and the whole pipeline take?

- Detection: `ObjectronDetector.detect` on ../shared/data/images/objectron_chair.jpg. The photo shows two chairs on
  white; each chair's region is computed from the photo (its connected non-white component,
  `tests/test_objectron.py::two_chairs`) and must hold exactly one detection's centre, and that detection's
  projected 3D box must enclose it: `inside` is the share of the region inside the box's 2D extent (>= 0.85), `iou`
  the extent's IoU with the region (>= 0.65 for the dark chair, 0.5 for the wooden one: the test's thresholds), and
  `tight` the region's area over the extent's (reported). objectron_ok is true when exactly two chairs are found and
  both pass.
- Latency: the model alone (LiteRT interpreter, XNNPACK, `num_threads` = 2, one invoke on the prepared input) and the
  whole pipeline (fit + invoke + decode + EPnP lift), called alternately, N runs each after a warm-up; medians and
  their ratio (pipeline / model: what the Python pre/post-processing adds). LiteRT runs its own thread pool, not
  OpenMP; OMP_WAIT_POLICY=PASSIVE is set anyway (if unset) and recorded.

    python benchmarks/seed_objectron.py [--quick]

Without --quick it writes benchmarks/results/seed_objectron.json. Ends with one RESULT line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

THREADS = 2
INSIDE_MIN = 0.85


def run(quick: bool = False) -> dict:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import cv2

    from conftest import SHARED
    from test_objectron import IOU_MIN, coverage, extent_iou, two_chairs

    from edgeslim.apps.objectron import ObjectronDetector, fit_image
    from edgeslim.bench import machine_info

    photo = SHARED / "data" / "images" / "objectron_chair.jpg"
    img = cv2.imread(str(photo))
    if img is None:
        raise FileNotFoundError(f"{photo}: the demo photo is missing; the benchmark needs ../shared.")
    det = ObjectronDetector.from_zoo(local_dir=SHARED / "models", threads=THREADS)
    boxes = det.detect(img)

    chairs = []
    dark, wooden = two_chairs(img)  # computed from the photo: its two non-white components, upper then lower
    regions = {"dark_chair_upper_right": (dark, "dark"), "wooden_chair_lower_left": (wooden, "wooden")}
    for name, ((x1, y1, x2, y2), chair) in regions.items():
        mine = [b for b in boxes if x1 <= b.keypoints[0, 0] <= x2 and y1 <= b.keypoints[0, 1] <= y2]
        row = {"region": name, "region_xyxy": [x1, y1, x2, y2], "detections": len(mine)}
        if len(mine) == 1:
            b = mine[0]
            inside, tight = coverage(b.pose.projected[1:], (x1, y1, x2, y2))
            iou = extent_iou(b.pose.projected[1:], (x1, y1, x2, y2), img.shape)
            ext = [*b.pose.projected[1:].min(axis=0).round(1).tolist(), *b.pose.projected[1:].max(axis=0).round(1).tolist()]
            row.update(score=round(b.score, 4), inside=round(inside, 3), iou=round(iou, 3), tight=round(tight, 3),
                       box_extent_xyxy=ext,
                       reprojection_px=round(b.pose.reprojection_error, 2),
                       dimensions=[round(float(v), 3) for v in b.pose.dimensions],
                       ok=bool(inside >= INSIDE_MIN and iou >= IOU_MIN[chair]))
        else:
            row["ok"] = False
        chairs.append(row)
    ok = len(boxes) == 2 and all(c["ok"] for c in chairs)

    x, _ = fit_image(img, det.input_size)
    n = 10 if quick else 60
    for _ in range(3):
        det.infer(x)
        det.detect(img)
    t_model, t_pipe = [], []
    for _ in range(n):  # alternating call by call: drift on a shared machine hits both alike
        t = time.perf_counter()
        det.infer(x)
        t_model.append(time.perf_counter() - t)
        t = time.perf_counter()
        det.detect(img)
        t_pipe.append(time.perf_counter() - t)
    model_ms, pipe_ms = statistics.median(t_model) * 1e3, statistics.median(t_pipe) * 1e3
    ratios = [p / m for p, m in zip(t_pipe, t_model)]

    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # a source build without metadata
        litert = "unknown"
    return {
        "objectron_ok": ok,
        "objectron_chairs": len(boxes),
        "objectron_scores": [round(b.score, 4) for b in boxes],
        "objectron_score_min": min((round(b.score, 4) for b in boxes), default=0.0),
        "objectron_inside_min": min((c.get("inside", 0.0) for c in chairs), default=0.0),
        "objectron_tight_min": min((c.get("tight", 0.0) for c in chairs), default=0.0),
        "objectron_per_chair": chairs,
        "objectron_iou_min": min((c.get("iou", 0.0) for c in chairs), default=0.0),
        "objectron_thresholds": {"inside": INSIDE_MIN, "iou": IOU_MIN},
        "objectron_model_ms": round(model_ms, 2),
        "objectron_pipeline_ms": round(pipe_ms, 2),
        "objectron_pipeline_over_model": round(statistics.median(ratios), 3),
        "objectron_runs": n,
        "threads": THREADS,
        "thread_policy": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "runtime": "LiteRT XNNPACK thread pool"},
        "litert": litert,
        "input_shape": [1, *det.input_size, 3],
        "machine": machine_info(THREADS),
        "quick": quick,
    }


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    res = run(quick=quick)
    if not quick:
        out = ROOT / "benchmarks" / "results" / "seed_objectron.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=2))
        os.replace(tmp, out)
    scalars = {k: v for k, v in res.items() if k.startswith("objectron_") and isinstance(v, (bool, int, float))}
    for c in res["objectron_per_chair"]:
        print(json.dumps(c))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in scalars.items()))


if __name__ == "__main__":
    main()
