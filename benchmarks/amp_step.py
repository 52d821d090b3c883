"""One training step in bf16 AMP (edgeslim.train.amp, white/black lists) vs fp32 on this CPU.

Model: the fp32 MnistBNN shape (3x3 convs 32-64-64-128-128, GAP, linear) on a batch of
28x28 inputs, Adam. Both steps run in this process with 2 threads, interleaved in rounds;
the ratio is fp32 step time / bf16 step time per round (above 1 means bf16 is faster).
Also shows torch.autocast (torch's own lists) for reference.

    python benchmarks/amp_step.py [--rounds 7] [--batch 64]

Ends with ``RESULT amp_bf16_speedup=<fp32 step / edgeslim bf16 step>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from edgeslim.train.amp import AmpConfig, DynamicLossScaler, amp_step  # noqa: E402
from edgeslim.train.bnn import MnistBNN  # noqa: E402
from edgeslim.train.loop import _plain_step  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(fl for fl in line.split()[2:] if "avx512" in fl or "amx" in fl or fl in ("avx2", "fma"))
    except OSError:
        pass
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--inner", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"flags {cpu_flags()}, threads {THREADS}, batch {args.batch}")

    def torch_autocast_step(model, opt, xb, yb):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return float(loss.detach())

    steps = {
        "fp32": _plain_step,
        "edgeslim amp bf16": amp_step(AmpConfig(dtype="bfloat16"), DynamicLossScaler()),
        "torch.autocast bf16": torch_autocast_step,
    }
    models = {}
    for k in steps:
        torch.manual_seed(0)
        m = MnistBNN("fp32")
        models[k] = (m, torch.optim.Adam(m.parameters(), lr=1e-3))
        for _ in range(3):
            steps[k](*models[k], x, y)
    times = {k: [] for k in steps}
    order = list(steps)
    for r in range(args.rounds):
        for k in order[r % 3:] + order[: r % 3]:
            t = time.perf_counter()
            for _ in range(args.inner):
                steps[k](*models[k], x, y)
            times[k].append((time.perf_counter() - t) / args.inner)
    print(f"\n{'step':<24}{'median ms':>10}{'fp32/step (median, range)':>32}")
    result = None
    for k in steps:
        r = [a / b for a, b in zip(times["fp32"], times[k])]
        print(f"{k:<24}{statistics.median(times[k]) * 1e3:>10.1f}{statistics.median(r):>16.2f}x  [{min(r):.2f}, {max(r):.2f}]")
        if k == "edgeslim amp bf16":
            result = statistics.median(r)
    print(f"\nRESULT amp_bf16_speedup={result:.2f}")


if __name__ == "__main__":
    main()
