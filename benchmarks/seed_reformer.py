"""Reformer (LSH attention + reversible layers) against full shared-QK attention on CPU: memory, step time, bpc.

    python benchmarks/seed_reformer.py           # full run; writes benchmarks/results/seed_reformer.json
    python benchmarks/seed_reformer.py --quick   # tiny settings (under 2 minutes), writes nothing

Both sides are :class:`edgeslim.research.train.reformer.CharLM` with the same weights' shapes, reversible layers and chunked
feed-forward; only ``attention`` differs ("lsh": n_hashes 4, chunk_len 64, about L/64 buckets; "full").

1. Memory and step time at 1K, 4K and 16K tokens (batch 1, d_model 128, 4 heads, 2 layers, d_ff 512 in 4 chunks).
   Every (attention, length) runs in a fresh worker process: build the model, one warm-up step at 256 tokens,
   ``gc`` + ``malloc_trim``, then the peak resident set is reset (``/proc/self/clear_refs`` ``5``) and one
   forward+backward step runs at L tokens. Peak memory = ``VmHWM`` after the step minus ``VmRSS`` before it: what
   the step added to the resident set (activations, gradients, allocator slack). Where ``clear_refs`` is not
   writable, ``ru_maxrss`` (peak over the process's life) stands in; ``memory_method`` records which.
   8 GiB: each worker, after warm-up, sets ``RLIMIT_AS`` to its own address-space size + 8 GiB, so a step that
   needs more than 8 GiB more cannot allocate it and fails ("fits": false, with the allocator's message). This is
   a measured failure, not an estimate; the score-matrix size full attention would need is recorded beside it.
   The same workers then time further steps; rounds alternate which attention goes first, and the ratio
   full / LSH step time is taken per round (median reported).
2. Bits per character: byte-level LM on the Python standard library's own source (a fixed file list read from
   ``sysconfig.get_paths()["stdlib"]``; other fixed files held out), the same seed, batches, steps, sequence length
   and optimiser for both (400 steps of 8 x 512 bytes, Adam 2e-3, warm-up then cosine decay, clip 1.0; the model
   above with unchunked feed-forward); bpc = mean next-byte cross-entropy / ln 2 on 64 held-out windows spread
   over the held-out files (eval mode, LSH with a fixed seed for its rotations; also with 8 hash rounds at
   evaluation). The text, and so the figures, depend on the Python version, which is recorded. Training steps alternate LSH / full, so
   their per-step times are also an interleaved comparison at the training length.

Threads: 2 (``torch.set_num_threads`` and ``OMP_NUM_THREADS``), ``OMP_WAIT_POLICY=PASSIVE``, recorded with the CPU
flags. Prints ``RESULT reformer_16k_fits= reformer_mem_ratio_4k= reformer_bpc= full_bpc= ...``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

THREADS = 2
ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "OMP_WAIT_POLICY": "PASSIVE"}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CAP_BYTES = 8 << 30
LENGTHS = (1024, 4096, 16384)
MODEL = {"d_model": 128, "n_heads": 4, "n_layers": 2, "d_ff": 512, "n_hashes": 4, "chunk_len": 64, "ff_chunks": 4}
TRAIN_FILES = ("argparse.py", "ast.py", "calendar.py", "configparser.py", "dataclasses.py", "difflib.py", "enum.py",
               "fractions.py", "functools.py", "inspect.py", "pdb.py", "pickle.py", "pprint.py", "shutil.py",
               "subprocess.py", "tarfile.py", "threading.py", "typing.py")
HELDOUT_FILES = ("tempfile.py", "heapq.py", "textwrap.py", "csv.py", "bisect.py", "locale.py")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_flags() -> list[str]:
    """The CPU's vector flags, as every benchmark records them (edgeslim.bench.machine_info)."""
    from edgeslim.bench import machine_info

    return machine_info(1)["flags"]


# ---- worker: one (attention, length) in a fresh process ------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(cfg: dict) -> dict:
    import torch

    from edgeslim.research.train.reformer import CharLM, CharLMConfig, lm_loss

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(attention=cfg["attention"], **cfg["model"]))

    def step(length: int) -> float:
        tokens = torch.randint(0, 256, (1, length + 1))
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        lm_loss(model, tokens).backward()
        return time.perf_counter() - t

    step(256)
    model.zero_grad(set_to_none=True)  # gradients of the warm-up are not part of the measured step
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    out = {"attention": cfg["attention"], "length": cfg["length"]}
    vm_before = _status_kib("VmSize") << 10
    if cfg["cap_bytes"]:
        resource.setrlimit(resource.RLIMIT_AS, (vm_before + cfg["cap_bytes"], resource.getrlimit(resource.RLIMIT_AS)[1]))
    rss_before = _status_kib("VmRSS") << 10
    reset = _reset_peak()
    out["memory_method"] = "VmHWM-after-clear_refs" if reset else "ru_maxrss"
    try:
        first = step(cfg["length"])
    except (RuntimeError, MemoryError) as e:
        out.update(fits=False, error=str(e).splitlines()[0][:300])
        return out
    peak = (_status_kib("VmHWM") << 10) if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    times = [step(cfg["length"]) for _ in range(cfg["repeats"])]
    out.update(fits=True, peak_bytes=peak - rss_before, first_step_s=round(first, 4),
               step_s=[round(t, 4) for t in times] or [round(first, 4)])
    with _LiveTensorBytes() as live:  # a second view of memory: bytes of live tensors, without allocator slack
        step(cfg["length"])
    out["tensor_peak_bytes"] = live.peak
    return out


def _live_tensor_tracker():
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveTensorBytes(TorchDispatchMode):
        """Peak of the summed sizes of the tensor storages alive at once (every op's outputs, freed when
        collected), over one step; parameters and tensors that existed before are not counted."""

        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.current = self.peak = 0

        def _free(self, key: int) -> None:
            self.current -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if hasattr(t, "untyped_storage"):
                    st = t.untyped_storage()
                    key = st.data_ptr()
                    if key in self.live or st.nbytes() == 0:
                        continue
                    self.live[key] = st.nbytes()
                    self.current += st.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(st, self._free, key)
            return out

    return LiveTensorBytes


def _LiveTensorBytes():
    return _live_tensor_tracker()()


def _run_worker(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ, **ENV)
    try:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                           capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"attention": cfg["attention"], "length": cfg["length"], "fits": None, "error": f"timeout {timeout}s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or [""])[-1][:300]
        # killed or aborted while allocating under the cap counts as not fitting; anything else is reported as is
        return {"attention": cfg["attention"], "length": cfg["length"], "fits": False if p.returncode < 0 else None,
                "error": f"worker exit {p.returncode}: {tail}"}
    return json.loads(lines[-1])


def measure(lengths, rounds: int, repeats: int, model: dict, timeout: float, progress=print) -> dict:
    """Per (attention, length): peak memory (median over rounds), step seconds (median), fits under the cap."""
    raw: dict[tuple[str, int], list[dict]] = {}
    for length in lengths:
        for r in range(rounds):
            order = ("lsh", "full") if r % 2 == 0 else ("full", "lsh")
            for att in order:
                if att == "full" and raw.get((att, length)) and raw[(att, length)][-1].get("fits") is False:
                    continue  # an allocation failure under the cap is not going to change between rounds
                cfg = {"attention": att, "length": length, "model": model, "threads": THREADS,
                       "cap_bytes": CAP_BYTES, "repeats": repeats}
                res = _run_worker(cfg, timeout)
                raw.setdefault((att, length), []).append(res)
                progress(f"  {att:4s} L={length:6d} round {r}: " + (
                    f"peak {res['peak_bytes'] / 2**20:8.1f} MiB, step {statistics.median(res['step_s']):.3f} s"
                    if res.get("fits") else f"does not fit ({res.get('error')})"))
    table = {}
    for (att, length), runs in raw.items():
        ok = [x for x in runs if x.get("fits")]
        table[f"{att}_{length}"] = {
            "attention": att, "length": length, "fits": bool(ok) and len(ok) == len(runs),
            "peak_mib": round(statistics.median(x["peak_bytes"] for x in ok) / 2**20, 1) if ok else None,
            "step_s": round(statistics.median(t for x in ok for t in x["step_s"]), 4) if ok else None,
            "tensor_peak_mib": round(statistics.median(x["tensor_peak_bytes"] for x in ok) / 2**20, 1) if ok else None,
            "step_s_per_round": [statistics.median(x["step_s"]) for x in ok],
            "errors": sorted({x["error"] for x in runs if x.get("error")}),
            "memory_method": ok[0]["memory_method"] if ok else None,
        }
    return table


# ---- bits per character on stdlib source -------------------------------------------------------------------

def _read(files) -> tuple[bytes, list[str]]:
    base = Path(sysconfig.get_paths()["stdlib"])
    parts, used = [], []
    for name in files:
        p = base / name
        if p.is_file():
            parts.append(p.read_bytes())
            used.append(name)
    if not parts:
        raise RuntimeError(f"none of {files} found under {base}")
    return b"\n".join(parts), used


def train_and_eval(*, seq_len: int, batch: int, steps: int, eval_windows: int, model: dict, lr: float,
                   progress=print) -> dict:
    import torch

    from edgeslim.research.train.reformer import CharLM, CharLMConfig, SharedQKAttention, lm_loss

    torch.set_num_threads(THREADS)
    train_bytes, train_used = _read(TRAIN_FILES)
    held_bytes, held_used = _read(HELDOUT_FILES)
    train = torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8).long()
    held = torch.frombuffer(bytearray(held_bytes), dtype=torch.uint8).long()
    n_eval = min(eval_windows, len(held) // (seq_len + 1))
    # windows spread evenly over the held-out files (their openings are mostly prose: docstrings, licences)
    eval_starts = torch.linspace(0, len(held) - seq_len - 1, n_eval).long().tolist()
    eval_set = torch.stack([held[i:i + seq_len + 1] for i in eval_starts])

    models, opts, scheds, gens = {}, {}, {}, {}
    for att in ("lsh", "full"):
        torch.manual_seed(0)
        models[att] = CharLM(CharLMConfig(attention=att, **model))
        opts[att] = torch.optim.Adam(models[att].parameters(), lr=lr)
        warm = max(1, steps // 20)
        scheds[att] = torch.optim.lr_scheduler.LambdaLR(
            opts[att], lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
        gens[att] = torch.Generator().manual_seed(1)  # the same batches for both
    times = {"lsh": [], "full": []}
    losses = {"lsh": [], "full": []}
    t_start = time.perf_counter()
    for s in range(steps):
        for att in (("lsh", "full") if s % 2 == 0 else ("full", "lsh")):
            m, opt = models[att], opts[att]
            starts = torch.randint(0, len(train) - seq_len - 1, (batch,), generator=gens[att])
            xb = torch.stack([train[i:i + seq_len + 1] for i in starts.tolist()])
            torch.manual_seed(1000 + s)  # LSH rotations: the same sequence whatever ran before
            t = time.perf_counter()
            loss = lm_loss(m, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            scheds[att].step()
            times[att].append(time.perf_counter() - t)
            losses[att].append(float(loss.detach()))
        if (s + 1) % max(1, steps // 10) == 0:
            progress(f"  step {s + 1}/{steps}: train loss lsh {losses['lsh'][-1]:.3f} full {losses['full'][-1]:.3f} "
                     f"({time.perf_counter() - t_start:.0f} s)")

    def bpc(m, n_hashes: int | None = None) -> float:
        m.eval()
        if n_hashes is not None:
            for mod in m.modules():
                if isinstance(mod, SharedQKAttention):
                    mod.n_hashes = n_hashes
        torch.manual_seed(123)
        total = 0.0
        with torch.no_grad():
            for i in range(0, n_eval, batch):
                xb = eval_set[i:i + batch]
                total += float(lm_loss(m, xb)) * len(xb)
        return total / n_eval / math.log(2)

    out = {"reformer_bpc": round(bpc(models["lsh"]), 4), "full_bpc": round(bpc(models["full"]), 4)}
    out["reformer_bpc_8_hashes_eval"] = round(bpc(models["lsh"], n_hashes=8), 4)
    ratios = [f / r for r, f in zip(times["lsh"], times["full"])]
    out.update({
        "train_steps": steps, "train_seq_len": seq_len, "train_batch": batch, "train_lr": lr,
        "train_step_s_lsh": round(statistics.median(times["lsh"]), 4),
        "train_step_s_full": round(statistics.median(times["full"]), 4),
        "train_step_ratio_full_over_lsh": round(statistics.median(ratios), 3),
        "final_train_loss": {k: round(statistics.mean(v[-10:]), 4) for k, v in losses.items()},
        "train_files": train_used, "heldout_files": held_used, "train_bytes": len(train),
        "heldout_bytes_evaluated": int(eval_set.numel()), "python": platform.python_version(),
    })
    return out


# ---- the run -------------------------------------------------------------------------------------------------

def run(quick: bool = False) -> dict:
    """Memory/time at 1K/4K/16K and held-out bpc; returns the flat result dict (see the module docstring)."""
    import torch

    torch.set_num_threads(THREADS)
    lengths = LENGTHS
    if quick:
        mem = measure(lengths, rounds=1, repeats=0, model=MODEL, timeout=300)
        lm = train_and_eval(seq_len=128, batch=4, steps=30, eval_windows=16, lr=2e-3,
                            model={**MODEL, "d_model": 64, "d_ff": 256, "chunk_len": 32, "ff_chunks": 1})
    else:
        mem = measure(lengths, rounds=3, repeats=2, model=MODEL, timeout=900)
        lm = train_and_eval(seq_len=512, batch=8, steps=400, eval_windows=64, lr=2e-3, model={**MODEL, "ff_chunks": 1})
    res: dict = {}
    for length in lengths:
        k = f"{length // 1024}k"
        lsh, full = mem[f"lsh_{length}"], mem[f"full_{length}"]
        res[f"reformer_step_s_{k}"], res[f"full_step_s_{k}"] = lsh["step_s"], full["step_s"]
        res[f"reformer_peak_mib_{k}"], res[f"full_peak_mib_{k}"] = lsh["peak_mib"], full["peak_mib"]
        res[f"reformer_tensor_peak_mib_{k}"] = lsh["tensor_peak_mib"]
        res[f"full_tensor_peak_mib_{k}"] = full["tensor_peak_mib"]
        res[f"reformer_{k}_fits"], res[f"full_{k}_fits"] = lsh["fits"], full["fits"]
        per_round = [f / r for r, f in zip(lsh["step_s_per_round"], full["step_s_per_round"])]
        res[f"step_ratio_full_over_reformer_{k}"] = round(statistics.median(per_round), 3) if per_round else None
        # what full attention's score matrices alone would take: one (heads, L, L) fp32 tensor
        res[f"full_scores_gib_{k}"] = round(MODEL["n_heads"] * length * length * 4 / 2**30, 3)
    r4, f4 = res["reformer_peak_mib_4k"], res["full_peak_mib_4k"]
    res["reformer_mem_ratio_4k"] = round(r4 / f4, 4) if r4 and f4 else None
    r4, f4 = res["reformer_tensor_peak_mib_4k"], res["full_tensor_peak_mib_4k"]
    res["reformer_tensor_mem_ratio_4k"] = round(r4 / f4, 4) if r4 and f4 else None
    res.update({k: lm[k] for k in ("reformer_bpc", "full_bpc", "reformer_bpc_8_hashes_eval")})
    res["conditions"] = {
        "quick": quick, "threads": THREADS, "env": ENV, "cpu_flags": cpu_flags(), "cpu": cpu_name(),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_method": next((v["memory_method"] for v in mem.values() if v["memory_method"]), None),
        "memory_cap": "RLIMIT_AS = worker address space after warm-up + 8 GiB; fits = the step allocated within it",
        "model": MODEL, "batch": 1, "lengths": list(lengths),
    }
    res["memory_table"] = mem
    res["lm"] = lm
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, under 2 minutes; writes nothing")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))), flush=True)
        return
    res = run(quick=args.quick)
    keys = ["reformer_16k_fits", "full_16k_fits", "reformer_mem_ratio_4k", "reformer_tensor_mem_ratio_4k",
            "reformer_bpc", "full_bpc",
            "reformer_bpc_8_hashes_eval"] + [f"{a}_{m}_{k}" for k in ("1k", "4k", "16k")
                                             for a in ("reformer", "full") for m in ("peak_mib", "step_s")]
    print("RESULT " + " ".join(f"{k}={res[k]}" for k in keys))
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / "seed_reformer.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
