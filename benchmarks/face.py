"""Faces on a CPU, measured in ONE run: YuNet detection vs cv2.FaceDetectorYN, the optimize-selected YuNet vs our
fp32 pipeline, the HyperFAS ONNX port vs its NumPy reference, and the beauty pipeline on 720p video.

- Detection latency: our pipeline (letterbox, onnxruntime, NumPy decode + NMS) and cv2.FaceDetectorYN (OpenCV's dnn
  engine and C++ post-processing) on the same yunet_s_640_640.onnx, the same photos and the same thread count,
  alternating call by call; each round times every photo with both, the round's ratio is cv2 time / our time, and
  the RESULT is the median over rounds. onnxruntime runs with passive (non-spinning) threads here, so its idle
  workers do not steal the cores cv2 uses next (the conservative choice for our side).
- Recall at IoU 0.5 on WIDER val subset levels (Easy/Medium/Hard; 40 held-out photos, evaluation only) for both at
  the same score threshold (0.6) and NMS (0.3).
- `edgeslim.study.optimize` (the main job) on YuNet with the detect task: calibration on faces/wider_val_calib,
  evaluation on faces/wider_val_subset; opt_speedup is the selected candidate's model speedup over the original
  (median of per-round ratios, own worker processes), pipe_speedup the whole pipeline (pre + model + post) with the
  selected model vs with the fp32 model, timed alternating in this process; opt_drop the largest recall drop over
  the three levels.
- HyperFAS: max |ONNX - NumPy float64 reference| over the spoof example's face crop, 8 face crops of
  wider_val_calib and 8 random inputs; fas_fake_score is the spoof example's score (fake when <= 0.95).
- Beauty: a 720p clip made from a wider_val_calib portrait (one face, moving), processed with tracking; frames/s of
  the processing (decode and encode excluded; the end-to-end figure is reported beside it).

    python benchmarks/face.py [--rounds 7] [--threads 2] [--recipes fp32,int8,...] [--engines mnn,ncnn,openvino]

Writes benchmarks/results/face.{json,md} and benchmarks/results/face_beauty_before_after.jpg; ends with one RESULT
line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import SHARED  # noqa: E402

MODELS = SHARED / "models"
FACES = SHARED / "data" / "faces"
SPOOF = SHARED / "data" / "images" / "hyperfas_fake_screen.png"
PORTRAIT = FACES / "wider_val_calib" / "images" / "13--Interview" / "13_Interview_Interview_2_People_Visible_13_204.jpg"
OUT = ROOT / "benchmarks" / "results"


def _cv2_preds(cv, imgs, size=(640, 640)):
    """cv2.FaceDetectorYN's faces per image (N x 15, image pixels), fed the same letterboxed pixels as ours."""
    from edgeslim.tasks._yunet import letterbox

    preds = []
    for img in imgs:
        x, lb = letterbox(img, size)
        feed = np.ascontiguousarray(x[0].transpose(1, 2, 0).astype(np.uint8))
        cv.setInputSize((feed.shape[1], feed.shape[0]))
        _, f = cv.detect(feed)
        f = np.zeros((0, 15), np.float32) if f is None else f.astype(np.float32)
        f[:, :14] /= lb.scale
        preds.append(f)
    return preds


def _cv2_detect_timed(cv, img, size=(640, 640)):
    """What a cv2 user does for a 640x640 model: scale to fit, pad, detect."""
    import cv2

    h, w = img.shape[:2]
    s = min(1.0, size[0] / h, size[1] / w)
    im = cv2.resize(img, (int(round(w * s)), int(round(h * s)))) if s < 1 else img
    im = cv2.copyMakeBorder(im, 0, size[0] - im.shape[0], 0, size[1] - im.shape[1], cv2.BORDER_CONSTANT, value=0)
    return cv.detect(im)


def _alternate(fa, fb, items, rounds):
    """Per round: total time of fa and of fb over `items`, calls alternating (a, b, a, b...), order flipped each
    round. Returns per-round (ta, tb)."""
    out = []
    for r in range(rounds):
        ta = tb = 0.0
        for it in items:
            pair = ((fa, "a"), (fb, "b")) if r % 2 == 0 else ((fb, "b"), (fa, "a"))
            for f, k in pair:
                t0 = time.perf_counter()
                f(it)
                dt = time.perf_counter() - t0
                if k == "a":
                    ta += dt
                else:
                    tb += dt
        out.append((ta, tb))
    return out


def detection(args, res):
    import cv2

    from edgeslim.apps.face.yunet import YunetConfig, YunetDetector, faces_to_array
    from edgeslim.engines.ort import OrtRunner
    from edgeslim.tasks.detect import DetectTask, read_face_folder

    model = MODELS / "yunet_s_640_640.onnx"
    cfg = YunetConfig(score_threshold=0.6, nms_threshold=0.3)
    runner = OrtRunner(model, args.threads, policy="shared")
    det = YunetDetector(runner, input_name="input", input_size=(640, 640), config=cfg)
    cv2.setNumThreads(args.threads)
    cv = cv2.FaceDetectorYN.create(str(model), "", (640, 640), 0.6, 0.3, 5000)
    ev = read_face_folder(FACES / "wider_val_subset")
    imgs = [s.image for s in ev]
    for img in imgs[:3]:  # warm-up both
        det.detect(img)
        _cv2_detect_timed(cv, img)
    per = _alternate(det.detect, lambda im: _cv2_detect_timed(cv, im), imgs[:12], args.rounds)
    ratios = [tb / ta for ta, tb in per]
    res["det"] = {"ratios_cv2_over_ours": [round(r, 4) for r in ratios], "speedup": float(np.median(ratios)),
                  "ours_ms_per_image": float(np.median([ta for ta, _ in per]) / 12 * 1e3),
                  "cv2_ms_per_image": float(np.median([tb for _, tb in per]) / 12 * 1e3),
                  "photos_timed": 12, "rounds": args.rounds, "threads": args.threads}
    task = DetectTask(score_threshold=0.6)
    ours = [faces_to_array(det.detect(im)) for im in imgs]
    theirs = _cv2_preds(cv, imgs)
    a, b = task.level_scores(ours, ev), task.level_scores(theirs, ev)
    res["recall"] = {"ours": {k: v for k, v in a.items() if k.startswith(("recall", "ap"))},
                     "cv2": {k: v for k, v in b.items() if k.startswith(("recall", "ap"))}, "score_threshold": 0.6}
    return det


def optimize_yunet(args, res, work: Path):
    from edgeslim.apps.face.yunet import YunetConfig, YunetDetector, canonical_names
    from edgeslim.engines import get_engine
    from edgeslim.study import StudyConfig, optimize
    from edgeslim.tasks.detect import read_face_folder

    spec = work / "split.json"
    spec.write_text(json.dumps({"calib": str(FACES / "wider_val_calib"), "eval": str(FACES / "wider_val_subset")}))
    cfg = StudyConfig(model=str(MODELS / "yunet_s_640_640.onnx"), model_label="yunet-s", task="detect", data=str(spec),
                      recipes=tuple(args.recipes.split(",")), engines=tuple(e for e in args.engines.split(",") if e),
                      threads=args.threads, rounds=args.opt_rounds, cache=False)
    t0 = time.time()
    study = optimize(cfg, work)
    rows = []
    for c in study.candidates:
        rows.append({"id": c.id, "status": c.status, "reason": c.reason, "recall_hard": c.metric,
                     **{k: c.metric_extra.get(k) for k in ("recall_easy", "recall_medium", "recall_hard",
                                                           "worst_level_drop")},
                     "agree": c.fidelity.get("exact_match"), "speedup": c.speedup, "speedup_range": c.speedup_range,
                     "p50_ms": c.latency_ms.get("p50"), "size_bytes": c.size_bytes})
    sel = study.candidate(study.selected) if study.selected else None
    base = study.candidate(study.baseline)
    out = {"selected": study.selected, "selection": study.selection, "candidates": rows,
           "seconds": round(time.time() - t0, 1), "noisy": study.bench.get("noisy"),
           "noise_reasons": study.bench.get("noise_reasons")}
    if sel is not None:
        levels = ("easy", "medium", "hard")
        out["drop"] = max(base.metric_extra[f"recall_{lv}"] - (sel.metric_extra.get(f"recall_{lv}", base.metric_extra[f"recall_{lv}"])
                                                               if sel is not base else base.metric_extra[f"recall_{lv}"]) for lv in levels)
        out["speedup"] = sel.speedup
        # the whole pipeline, fp32 model vs the selected one, alternating in this process
        ycfg = YunetConfig(score_threshold=0.6)
        mk = lambda c: YunetDetector(get_engine(c.engine).load(work / c.artifact, args.threads, "shared"), input_name="input",  # noqa: E731
                                     input_size=(640, 640), config=ycfg, output_names=canonical_names([]))
        d_base, d_sel = mk(base), mk(sel)
        imgs = [s.image for s in read_face_folder(FACES / "wider_val_subset")][:12]
        for im in imgs[:3]:
            d_base.detect(im)
            d_sel.detect(im)
        per = _alternate(d_base.detect, d_sel.detect, imgs, args.rounds)
        out["pipe_speedup"] = float(np.median([ta / tb for ta, tb in per]))
        out["pipe_ratios"] = [round(ta / tb, 4) for ta, tb in per]
    res["optimize"] = out


def hyperfas(args, res, det):
    import cv2

    from edgeslim.apps.face.antispoof import AntiSpoof, build_onnx, crop_face, numpy_forward, preprocess, read_h5
    from edgeslim.apps.face.yunet import YunetConfig, YunetDetector
    from edgeslim.tasks.detect import read_face_folder

    layers = read_h5(MODELS / "hyperfas_fas.h5")
    fas = AntiSpoof(build_onnx(layers), threads=args.threads)
    dyn = YunetDetector.from_model(MODELS / "yunet_s_dynamic.onnx", threads=args.threads, config=YunetConfig())
    img = cv2.imread(str(SPOOF))
    faces = dyn.detect(img)
    xs = [preprocess(crop_face(img, faces[0].box))]
    real_scores = []
    for s in read_face_folder(FACES / "wider_val_calib"):
        fs = [f for f in dyn.detect(s.image) if f.box[2] >= 48]  # faces big enough to judge
        if fs and len(xs) < 9:
            xs.append(preprocess(crop_face(s.image, fs[0].box)))
            real_scores.append(fas.score_input(xs[-1]))
    rng = np.random.default_rng(0)
    xs += [rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32) for _ in range(8)]
    diffs = [abs(fas.score_input(x) - float(numpy_forward(layers, x)[0, 0])) for x in xs]
    t = []
    for _ in range(20):
        t0 = time.perf_counter()
        fas.score_input(xs[0])
        t.append(time.perf_counter() - t0)
    res["hyperfas"] = {"maxdiff": float(max(diffs)), "inputs": len(xs), "fake_score": fas.score_input(xs[0]),
                       "fake_verdict": "real" if fas.score_input(xs[0]) > 0.95 else "fake",
                       "wider_calib_face_scores": [round(s, 4) for s in real_scores],
                       "ms_p50": float(np.median(t) * 1e3)}


def beauty(args, res, work: Path):
    import cv2

    from edgeslim.apps.face.beauty import BeautyConfig, Beautifier, beautify_video, side_by_side
    from edgeslim.apps.face.yunet import YunetDetector

    det = YunetDetector.from_model(MODELS / "yunet_s_dynamic.onnx", threads=args.threads)
    b = Beautifier(det, BeautyConfig())
    img = cv2.imread(str(PORTRAIT))
    big = cv2.resize(img, (1440, 820))
    src = work / "clip720.mp4"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 24, (1280, 720))
    n = args.frames
    for i in range(n):  # the face sways left/right and a little up/down, as in a hand-held selfie clip
        dx, dy = int(70 * np.sin(i / 10)), int(20 * np.sin(i / 7))
        w.write(np.ascontiguousarray(big[50 + dy:770 + dy, 80 + dx:1360 + dx]))
    w.release()
    b.frame(cv2.resize(img, (1280, 720)))  # warm-up
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        st = beautify_video(b, src, work / "out.mp4")
        runs.append((st, time.perf_counter() - t0))
    best = sorted(runs, key=lambda r: r[0].fps)[1]  # the median of three runs
    st = best[0]
    res["beauty"] = {**st.to_dict(), "e2e_fps": round(st.frames / best[1], 1),
                     "fps_runs": [round(r[0].fps, 1) for r in runs], "threads": args.threads}
    # the before/after picture for the README: HyperFAS' own example photo (BSD-3-Clause repository)
    demo = cv2.imread(str(SPOOF))
    after, _ = b.apply(demo)
    pic = side_by_side(demo, after, max_width=1000)
    if not args.no_write:
        cv2.imwrite(str(OUT / "face_beauty_before_after.jpg"), pic, [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--opt-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--recipes", default="fp32,int8,int8-dynamic,bf16")
    ap.add_argument("--engines", default="mnn,ncnn,openvino")
    ap.add_argument("--skip-optimize", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from edgeslim.bench import machine_info

    import cv2

    res: dict = {"machine": {**machine_info(args.threads), "opencv": cv2.__version__}, "loadavg_before": os.getloadavg(),
                 "args": vars(args)}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeslim-face-") as d:
        work = Path(d)
        det = detection(args, res)
        hyperfas(args, res, det)
        beauty(args, res, work)
        if not args.skip_optimize:
            (work / "opt").mkdir()
            optimize_yunet(args, res, work / "opt")
    res["loadavg_after"] = os.getloadavg()
    res["seconds"] = round(time.time() - t0, 1)
    o = res.get("optimize", {})
    rc, rv = res["recall"]["ours"], res["recall"]["cv2"]
    line = (f"RESULT det_speedup_vs_cv2={res['det']['speedup']:.2f} easy={rc['recall_easy']:.4f} "
            f"medium={rc['recall_medium']:.4f} hard={rc['recall_hard']:.4f} cv2_easy={rv['recall_easy']:.4f} "
            f"cv2_medium={rv['recall_medium']:.4f} cv2_hard={rv['recall_hard']:.4f} "
            f"opt_speedup={o.get('speedup') or float('nan'):.2f} opt_drop={o.get('drop', float('nan')):.4f} "
            f"fas_maxdiff={res['hyperfas']['maxdiff']:.2e} fas_fake_score={res['hyperfas']['fake_score']:.4f} "
            f"beauty_720p_fps={res['beauty']['process_fps']:.1f}")
    res["result_line"] = line
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "face.json").write_text(json.dumps(res, indent=1, default=str))
        (OUT / "face.md").write_text(_markdown(res))
    print(json.dumps({k: res[k] for k in ("det", "recall", "hyperfas", "beauty")}, indent=1, default=str))
    if o:
        print(json.dumps({k: o[k] for k in o if k != "candidates"}, indent=1, default=str))
        for r in o["candidates"]:
            print(r)
    print("\n" + line)


def _markdown(res: dict) -> str:
    m = res["machine"]
    L = [f"# Faces on a CPU ({time.strftime('%Y-%m-%d')})", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads used; flags {', '.join(m['flags'])}; "
         f"onnxruntime {m['onnxruntime']}. Load average before/after: {res['loadavg_before']} / {res['loadavg_after']} "
         "(the machine is shared).", "",
         f"    {res['result_line']}", "",
         "## Detection: our YuNet pipeline vs cv2.FaceDetectorYN (yunet_s_640_640.onnx, same photos, same threads)", "",
         f"- speedup (cv2 time / ours, median of {res['det']['rounds']} rounds over {res['det']['photos_timed']} photos): "
         f"{res['det']['speedup']:.2f} (rounds {res['det']['ratios_cv2_over_ours']}); "
         f"{res['det']['ours_ms_per_image']:.1f} ms vs {res['det']['cv2_ms_per_image']:.1f} ms per photo", "",
         "| WIDER val subset (40 photos) | ours | cv2 |", "|---|---|---|"]
    for k in ("recall_easy", "recall_medium", "recall_hard", "ap_easy", "ap_medium", "ap_hard"):
        L.append(f"| {k} | {res['recall']['ours'][k]:.4f} | {res['recall']['cv2'][k]:.4f} |")
    o = res.get("optimize")
    if o:
        L += ["", f"## edgeslim optimize on YuNet-s (detect task; selected: {o['selected']}, {o['seconds']} s)", "",
              f"Selection: {o['selection'].get('why')}", "",
              f"Pipeline speedup with the selected model (pre + model + post): {o.get('pipe_speedup', float('nan')):.2f} "
              f"(rounds {o.get('pipe_ratios')})", "",
              "| candidate | status | recall E/M/H | agree | speedup | p50 ms | size | reason |", "|---|---|---|---|---|---|---|---|"]
        for r in o["candidates"]:
            rec = "/".join("-" if r.get(f"recall_{lv}") is None else f"{r[f'recall_{lv}']:.3f}" for lv in ("easy", "medium", "hard"))
            L.append(f"| {r['id']} | {r['status']} | {rec} | {r['agree'] if r['agree'] is None else round(r['agree'], 3)} | "
                     f"{'-' if r['speedup'] is None else round(r['speedup'], 2)} | {'-' if r['p50_ms'] is None else round(r['p50_ms'], 2)} | "
                     f"{'-' if r['size_bytes'] is None else r['size_bytes']} | {(r['reason'] or '')[:120]} |")
        if o.get("noisy"):
            L += ["", f"Timing noise: {o.get('noise_reasons')}"]
    h = res["hyperfas"]
    L += ["", "## HyperFAS ONNX port", "",
          f"- max |ONNX - NumPy reference| over {h['inputs']} inputs: {h['maxdiff']:.2e}",
          f"- spoof example (screen photo): score {h['fake_score']:.4f} -> {h['fake_verdict']} (threshold 0.95)",
          f"- wider_val_calib face crops (live people, low-resolution web photos): {h['wider_calib_face_scores']}",
          f"- {h['ms_p50']:.2f} ms per face (onnxruntime)", ""]
    b = res["beauty"]
    L += ["## Beauty on 720p video (one face, tracked)", "",
          f"- processing {b['process_fps']} frames/s (runs {b['fps_runs']}), end to end with decode + encode {b['e2e_fps']} "
          f"frames/s; {b['frames']} frames, detector run {b['detections']} times", ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
