"""Binary (bit-packed, XNOR-popcount) conv and GEMM vs the fastest fp32 implementation.

Shapes: dabnn's benchmark conv (64 -> 64 channels, 56x56, 3x3, pad 1) and two GEMMs,
3136x64x(3*3*64) and 784x256x(3*3*256). fp32 candidates, each at the settings it is fastest
with: onnxruntime (graph optimizations on) with 2 threads and with 1 thread, with its spinning
pool off (the recorded policy, as for every pool here) and, for 2 threads, also on; torch
(oneDNN/MKL) with 2 threads. All candidates run in this process, interleaved in rounds; each
round's ratio is the fastest fp32 candidate's time over the binary kernel's time (the fp32
candidate with the lowest median is chosen once, over all rounds). Reported: medians over rounds
and the ratio range.

    python benchmarks/binary_kernels.py [--rounds 30] [--json benchmarks/results/binary_kernels.json]

Thread budget: 2 for everyone. The binary kernels use it as ``engine="auto"`` does: the
``avx512`` engine (CPUs with VPOPCNTDQ) runs problems under ``AVX512_SERIAL_BELOW`` word pairs
on the calling thread; a candidate forcing its 2-thread pool is shown beside it.

Binary candidates: ``engine="auto"`` (what a caller gets: ``avx512`` where the CPU has it,
else ``lut``/``popcount``) with int32 output and, for the conv, fused BN+sign output packed for
the next binary layer (what a stack of binary layers chains); the other engines for reference.

Ends with ``RESULT conv_speedup=<x> gemm_speedup=<x> packed_conv_speedup=<x> exact=<true|false>
isa=<name>``: conv_speedup and packed_conv_speedup are the conv's auto engine with int32 and
packed output; gemm_speedup is the smaller of the two GEMM shapes' speedups; exact is every
engine equal to the NumPy float +-1 reference (and the conv to torch's conv2d of the signs);
isa is the popcount ISA auto builds on. The ratio of min times (fastest fp32's over the binary
kernel's) is printed too: on a loaded machine multi-millisecond fp32 runs are preempted more often
than 0.1 ms binary ones, which inflates the median ratio. A profile follows: the conv kernel's word pairs per ns
against the register tile's own rate on L1-resident data, and the time outside the kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("NUMBA_NUM_THREADS", str(THREADS))
# On a shared machine a spinning or barrier-bound pool waits milliseconds for a descheduled
# worker: idle OpenMP threads (torch's and numba's) sleep instead of spinning, and numba uses
# its workqueue pool. Recorded in the output; override from the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import llvmlite.binding as llvm  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from numba import njit  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeslim.research.kernels import _binary_avx512 as avx  # noqa: E402
from edgeslim.research.kernels import binary as bk  # noqa: E402
from edgeslim.research.kernels import binary_ref as ref  # noqa: E402


def ort_session(model: onnx.ModelProto, threads: int, spinning: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_candidates(model: onnx.ModelProto, feed: dict) -> dict:
    out = {}
    for threads, spinning in ((THREADS, False), (1, False), (THREADS, True)):
        sess = ort_session(model, threads, spinning)
        name = f"onnxruntime fp32 {threads}t" + (" spinning" if spinning else "")
        out[name] = (lambda s: lambda: s.run(None, feed))(sess)
    return out


def conv_model(w: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def matmul_model(m: int, b: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, b.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def pooled(fn):
    """``fn`` with the avx512 engine forced onto numba's thread pool whatever the problem size."""

    def run():
        keep = bk.AVX512_SERIAL_BELOW
        bk.AVX512_SERIAL_BELOW = 0
        try:
            fn()
        finally:
            bk.AVX512_SERIAL_BELOW = keep

    return run


def time_call(fn, inner: int) -> float:
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def compare(name: str, fp32: dict, binary: dict, rounds: int, inner: int) -> tuple[dict, str, dict]:
    """Interleave all candidates; return (median speedup per binary candidate, table, medians)."""
    cands = {**fp32, **binary}
    for fn in cands.values():  # warm-up (JIT, oneDNN primitive creation)
        for _ in range(3):
            fn()
    times = {k: [] for k in cands}
    order = list(cands)
    for r in range(rounds):
        for k in order[r % len(order):] + order[: r % len(order)]:
            times[k].append(time_call(cands[k], inner))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min(fp32, key=lambda k: med[k])
    lines = [f"\n{name}: fastest fp32 = {best}"]
    lines.append(f"  {'candidate':<40}{'median ms':>10}{'min ms':>10}{'speedup (median, range)':>32}"
                 f"{'min/min':>9}")
    speedups, min_ratios = {}, {}
    fp32_min = min(min(times[k]) for k in fp32)
    for k in cands:
        ratios = [b / t for b, t in zip(times[best], times[k])]
        sp = statistics.median(ratios)
        if k in binary:
            speedups[k] = sp
            min_ratios[k] = fp32_min / min(times[k])
        lines.append(
            f"  {k:<40}{med[k] * 1e3:>10.3f}{min(times[k]) * 1e3:>10.3f}"
            f"{sp:>14.2f}x  [{min(ratios):.2f}, {max(ratios):.2f}]{fp32_min / min(times[k]):>8.2f}x"
        )
    return speedups, "\n".join(lines), {"fastest_fp32": best, "median_ms": {k: v * 1e3 for k, v in med.items()},
                                         "min_ms": {k: min(v) * 1e3 for k, v in times.items()},
                                         "speedup": speedups, "speedup_min_over_min": min_ratios}


@njit(nogil=True)
def _tile_loop(x, w, out, par, fl, cls, n):
    for _ in range(n):
        avx._tP_4d(x.ctypes.data, 8, 8 * 58, 3, 3, w.ctypes.data, 64 * 8, out.ctypes.data, 256, 576,
                   par.ctypes.data, fl.ctypes.data, cls.ctypes.data, 0, 0)


def tile_peak() -> float:
    """Word pairs per ns of one register tile (P_MAIN pixels x 32 filters) looping on L1-resident data."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**63, size=58 * 3 + 64, dtype=np.uint64)
    w = rng.integers(0, 2**63, size=9 * 64, dtype=np.uint64)
    out, par, fl = np.zeros(6 * 64, np.int32), np.zeros(64, np.int64), np.zeros(8, np.uint8)
    cls = np.zeros(6, np.int64)
    _tile_loop(x, w, out, par, fl, cls, 10)
    n = 50_000
    best = min(time_call(lambda: _tile_loop(x, w, out, par, fl, cls, n), 1) for _ in range(7))
    return n * avx.P_MAIN * 32 * 9 / best / 1e9


def cpu_name() -> str:
    """Model name, family and model as /proc/cpuinfo gives them (a VM may hide the model name)."""
    try:
        first = open("/proc/cpuinfo").read().split("\n\n")[0]
        info = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        return f"{info.get('model name', '?')}, family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    except OSError:
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    exact = True
    record: dict = {}

    isa = bk.isa()
    conditions = {
        "cpu": cpu_name(), "llvm_cpu": llvm.get_host_cpu_name(),
        "threads": THREADS, "torch": torch.__version__, "onnxruntime": ort.__version__, "numba": numba.__version__,
        "numba_threading_layer": numba.config.THREADING_LAYER, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "ort_spinning": "off (also shown on)", "avx512_serial_below_word_pairs": bk.AVX512_SERIAL_BELOW,
        "load_average": round(os.getloadavg()[0], 2), "isa": isa, "rounds": args.rounds,
    }
    record["conditions"] = conditions
    print(f"machine: {conditions['cpu']} (LLVM cpu {conditions['llvm_cpu']}), threads={THREADS}, "
          f"torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, numba {numba.__version__} ({numba.config.THREADING_LAYER} layer), "
          f"OMP_WAIT_POLICY={conditions['OMP_WAIT_POLICY']}, ORT spinning off (and on, one candidate), "
          f"load average {conditions['load_average']:.1f}")
    print(f"isa={isa}; auto engine for the conv: {bk.auto_engine(9, 64, 64)}; avx512 engine on the calling thread "
          f"below {bk.AVX512_SERIAL_BELOW} word pairs; popcount engine's instruction: {bk.popcount_instruction()}")

    # ---- conv 64->64, 56x56, 3x3, pad 1
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    xp = bk.pack_bits(x.transpose(0, 2, 3, 1))
    wp = bk.pack_conv_weight(w)
    wl = bk.prepare_weights(wp)  # run-time weight forms, built once per weight (like a oneDNN reorder)
    thr, sgn = bk.bn_to_threshold(rng.uniform(0.5, 1.5, 64), rng.standard_normal(64))
    want_dot = ref.binary_conv2d(xp, wp, 64)
    want_bits = ref.binary_conv2d_packed(xp, wp, 64, thr, sgn)
    for eng in ("avx512", "lut", "popcount"):
        exact &= bool(np.array_equal(bk.binary_conv2d(xp, wl, 64, engine=eng), want_dot))
        exact &= bool(np.array_equal(bk.binary_conv2d_packed(xp, wl, 64, thr, sgn, engine=eng), want_bits))
    keep, bk.AVX512_SERIAL_BELOW = bk.AVX512_SERIAL_BELOW, 0  # the 2-thread pool path too
    try:
        exact &= bool(np.array_equal(bk.binary_conv2d(xp, wl, 64, engine="avx512"), want_dot))
        exact &= bool(np.array_equal(bk.binary_conv2d_packed(xp, wl, 64, thr, sgn, engine="avx512"), want_bits))
    finally:
        bk.AVX512_SERIAL_BELOW = keep
    with torch.no_grad():
        want = torch.nn.functional.conv2d(torch.sign(xt) + (xt == 0), torch.sign(wt), padding=1).numpy()
    exact &= bool(np.array_equal(want_dot.transpose(0, 3, 1, 2), want.astype(np.int32)))

    def torch_conv():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, padding=1)

    binary = {
        "binary auto -> int32": lambda: bk.binary_conv2d(xp, wl, 64),
        "binary auto -> packed (BN+sign)": lambda: bk.binary_conv2d_packed(xp, wl, 64, thr, sgn),
        "binary avx512 -> packed, 2-thread pool": pooled(
            lambda: bk.binary_conv2d_packed(xp, wl, 64, thr, sgn, engine="avx512")),
        "binary lut -> int32": lambda: bk.binary_conv2d(xp, wl, 64, engine="lut"),
        "binary popcount -> int32": lambda: bk.binary_conv2d(xp, wp, 64, engine="popcount"),
    }
    conv_sp, table, rec = compare(
        "conv 1x64x56x56 * 64x64x3x3 (115.6 MMAC)",
        {"torch conv2d fp32 2t": torch_conv, **ort_candidates(conv_model(w), {"x": x})},
        binary,
        args.rounds,
        inner=10,
    )
    record["conv"] = rec
    print(table)
    print(f"  weights: fp32 {w.nbytes} bytes, packed {wp.nbytes} bytes ({w.nbytes / wp.nbytes:.0f}x smaller)")

    # ---- profile of the conv: kernel rate vs the tile's own rate, time outside the kernel
    pairs = 56 * 56 * 64 * 9
    peak = tile_peak()
    out_bits = np.zeros((1, 56, 56, 1), np.uint64)
    thr64, sgn64 = np.ascontiguousarray(thr, np.float64), np.ascontiguousarray(sgn, np.float64)
    out_bytes = out_bits.reshape(-1).view(np.uint8)

    def kernel_only():
        avx.conv_serial(xp, wl.w8, 64, 3, 3, 64, 1, 1, 56, 56, thr64, sgn64, True, out_bytes, 8, 56)

    t_kernel = statistics.median(time_call(kernel_only, 10) for _ in range(args.rounds))
    t_api = statistics.median(time_call(binary["binary auto -> packed (BN+sign)"], 10) for _ in range(args.rounds))
    prof = {"tile_peak_pairs_per_ns": peak, "kernel_ms": t_kernel * 1e3, "api_ms": t_api * 1e3,
            "kernel_pairs_per_ns": pairs / t_kernel / 1e9}
    record["conv_profile"] = prof
    print(f"\nprofile (conv -> packed, one thread, medians): {pairs} word pairs; register tile alone on L1 data "
          f"{peak:.1f} pairs/ns; whole kernel {t_kernel * 1e3:.3f} ms = {prof['kernel_pairs_per_ns']:.1f} pairs/ns "
          f"({100 * prof['kernel_pairs_per_ns'] / peak:.0f}% of the tile rate; the rest: zero-bordered input copy, "
          f"border-class offsets and thresholds, tile epilogues, row ends computed twice); "
          f"public call {t_api * 1e3:.3f} ms "
          f"(checks, allocation, dispatch: {max(0.0, t_api - t_kernel) * 1e3:.3f} ms)")

    # ---- GEMMs
    gemm_sps = []
    for m, n, k in [(3136, 64, 576), (784, 256, 2304)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        apk, bpk = bk.pack_bits(a, axis=1), bk.pack_bits(b, axis=0)
        bl = bk.prepare_weights(bpk.reshape(1, 1, *bpk.shape))
        want_g = ref.binary_gemm(apk, bpk, k)
        for eng in ("avx512", "lut", "popcount"):
            exact &= bool(np.array_equal(bk.binary_gemm(apk, bl, k, eng), want_g))
        sp, table, rec = compare(
            f"gemm {m}x{n}x{k} ({m * n * k / 1e6:.1f} MMAC)",
            {"torch.matmul fp32 2t": lambda: torch.matmul(at, bt), **ort_candidates(matmul_model(m, b), {"a": a})},
            {"binary auto -> int32": lambda: bk.binary_gemm(apk, bl, k),
             "binary avx512 -> int32, 2-thread pool": pooled(lambda: bk.binary_gemm(apk, bl, k, "avx512")),
             "binary lut -> int32": lambda: bk.binary_gemm(apk, bl, k, "lut"),
             "binary popcount -> int32": lambda: bk.binary_gemm(apk, bpk, k, "popcount")},
            args.rounds,
            inner=10 if m * n * k < 2e8 else 4,
        )
        record[f"gemm_{m}x{n}x{k}"] = rec
        print(table)
        gemm_sps.append(sp["binary auto -> int32"])

    result = {"conv_speedup": conv_sp["binary auto -> int32"], "gemm_speedup": min(gemm_sps),
              "packed_conv_speedup": conv_sp["binary auto -> packed (BN+sign)"], "exact": exact, "isa": isa}
    record["result"] = result
    mins = {"conv": record["conv"]["speedup_min_over_min"]["binary auto -> int32"],
            "packed_conv": record["conv"]["speedup_min_over_min"]["binary auto -> packed (BN+sign)"],
            "gemm": min(record[f"gemm_{m}x{n}x{k}"]["speedup_min_over_min"]["binary auto -> int32"]
                        for m, n, k in [(3136, 64, 576), (784, 256, 2304)])}
    record["min_over_min"] = mins
    print(f"\nfastest fp32 min time / binary min time (the least load-dependent view): conv {mins['conv']:.2f}x, "
          f"packed conv {mins['packed_conv']:.2f}x, gemm {mins['gemm']:.2f}x")
    record["conditions"]["load_average_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    print(f"\nRESULT conv_speedup={result['conv_speedup']:.2f} gemm_speedup={result['gemm_speedup']:.2f} "
          f"packed_conv_speedup={result['packed_conv_speedup']:.2f} exact={str(exact).lower()} isa={isa}")


if __name__ == "__main__":
    main()
