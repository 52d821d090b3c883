"""Binary (bit-packed, XNOR-popcount) conv and GEMM vs the fastest fp32 implementation.

Shapes: dabnn's benchmark conv (64 -> 64 channels, 56x56, 3x3, pad 1) and two GEMMs,
3136x64x(3*3*64) and 784x256x(3*3*256). fp32 candidates: torch (oneDNN/MKL) and onnxruntime
(spinning disabled so its idle threads do not steal the others' cores). All candidates run
in this process with 2 threads, interleaved in rounds; each round's ratio is the fastest
fp32 candidate's time over the binary kernel's time (the fp32 candidate with the lowest
median is chosen once, over all rounds). Reported: medians over rounds and the ratio range.

    python benchmarks/binary_kernels.py [--rounds 30]

Binary candidates: the ``lut`` engine (nibble tables, the default) and the ``popcount`` engine
(XOR + vectorized popcount), with int32 output, and for the conv also the fused BN+sign output
packed for the next binary layer. The RESULT figures are ``engine="auto"`` (what a caller gets:
lut for the conv and the first GEMM, popcount for the 2.4 MB-table GEMM) with int32 output.

Ends with ``RESULT conv_speedup=<x> gemm_speedup=<x> exact=<true|false>``; gemm_speedup is
the smaller of the two GEMM shapes' speedups; exact is both engines equal to the NumPy float
+-1 reference (and the conv to torch's conv2d of the signs).
"""

from __future__ import annotations

import argparse
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

import numba  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeslim.kernels import binary as bk  # noqa: E402
from edgeslim.kernels import binary_ref as ref  # noqa: E402


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_conv(w: np.ndarray) -> ort.InferenceSession:
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return ort_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def ort_matmul(m: int, b: np.ndarray) -> ort.InferenceSession:
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, b.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(b, "b")],
    )
    return ort_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def time_call(fn, inner: int) -> float:
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def compare(name: str, fp32: dict, binary: dict, rounds: int, inner: int) -> tuple[float, str]:
    """Interleave all candidates; return (median speedup of the first binary candidate, table)."""
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
    lines.append(f"  {'candidate':<28}{'median ms':>10}{'min ms':>10}{'speedup (median, range)':>32}")
    first = None
    for k in cands:
        ratios = [b / t for b, t in zip(times[best], times[k])]
        sp = statistics.median(ratios)
        if k in binary and first is None:
            first = sp
        lines.append(
            f"  {k:<28}{med[k] * 1e3:>10.3f}{min(times[k]) * 1e3:>10.3f}"
            f"{sp:>14.2f}x  [{min(ratios):.2f}, {max(ratios):.2f}]"
        )
    return first, "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    exact = True

    print(f"machine: {platform.processor() or platform.machine()}, threads={THREADS}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, numba {numba.__version__} ({numba.config.THREADING_LAYER} layer), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f}")
    print(f"popcount instruction in the conv kernel: {bk.popcount_instruction()}")

    # ---- conv 64->64, 56x56, 3x3, pad 1
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    sess = ort_conv(w)
    xp = bk.pack_bits(x.transpose(0, 2, 3, 1))
    wp = bk.pack_conv_weight(w)
    wl = bk.prepare_weights(wp)  # the lut engine's table, built once per weight (like a oneDNN reorder)
    thr, sgn = bk.bn_to_threshold(rng.uniform(0.5, 1.5, 64), rng.standard_normal(64))
    want_dot = ref.binary_conv2d(xp, wp, 64)
    want_bits = ref.binary_conv2d_packed(xp, wp, 64, thr, sgn)
    for eng in ("lut", "popcount"):
        exact &= bool(np.array_equal(bk.binary_conv2d(xp, wl, 64, engine=eng), want_dot))
        exact &= bool(np.array_equal(bk.binary_conv2d_packed(xp, wl, 64, thr, sgn, engine=eng), want_bits))
    with torch.no_grad():
        want = torch.nn.functional.conv2d(torch.sign(xt) + (xt == 0), torch.sign(wt), padding=1).numpy()
    exact &= bool(np.array_equal(want_dot.transpose(0, 3, 1, 2), want.astype(np.int32)))

    def torch_conv():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, padding=1)

    conv_sp, table = compare(
        "conv 1x64x56x56 * 64x64x3x3 (115.6 MMAC)",
        {"torch conv2d fp32": torch_conv, "onnxruntime Conv fp32": lambda: sess.run(None, {"x": x})},
        {
            "binary auto -> int32": lambda: bk.binary_conv2d(xp, wl, 64),
            "binary lut -> int32": lambda: bk.binary_conv2d(xp, wl, 64, engine="lut"),
            "binary lut -> packed (BN+sign)": lambda: bk.binary_conv2d_packed(xp, wl, 64, thr, sgn, engine="lut"),
            "binary popcount -> int32": lambda: bk.binary_conv2d(xp, wp, 64, engine="popcount"),
        },
        args.rounds,
        inner=10,
    )
    print(table)
    print(f"  weights: fp32 {w.nbytes} bytes, packed {wp.nbytes} bytes ({w.nbytes / wp.nbytes:.0f}x smaller); "
          f"lut engine's run-time table {wl.lut.nbytes} bytes")

    # ---- GEMMs
    gemm_sps = []
    for m, n, k in [(3136, 64, 576), (784, 256, 2304)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        s2 = ort_matmul(m, b)
        apk, bpk = bk.pack_bits(a, axis=1), bk.pack_bits(b, axis=0)
        bl = bk.prepare_weights(bpk.reshape(1, 1, *bpk.shape))
        want_g = ref.binary_gemm(apk, bpk, k)
        for eng in ("lut", "popcount"):
            exact &= bool(np.array_equal(bk.binary_gemm(apk, bl, k, eng), want_g))
        sp, table = compare(
            f"gemm {m}x{n}x{k} ({m * n * k / 1e6:.1f} MMAC)",
            {"torch.matmul fp32": lambda: torch.matmul(at, bt), "onnxruntime MatMul fp32": lambda: s2.run(None, {"a": a})},
            {"binary auto -> int32": lambda: bk.binary_gemm(apk, bl, k),
             "binary lut -> int32": lambda: bk.binary_gemm(apk, bl, k, "lut"),
             "binary popcount -> int32": lambda: bk.binary_gemm(apk, bpk, k, "popcount")},
            args.rounds,
            inner=10 if m * n * k < 2e8 else 4,
        )
        print(table)
        print(f"  weights: fp32 {b.nbytes} bytes, packed {bpk.nbytes} bytes ({b.nbytes / bpk.nbytes:.0f}x smaller); "
              f"lut table {bl.lut.nbytes} bytes")
        gemm_sps.append(sp)

    print(f"\nRESULT conv_speedup={conv_sp:.2f} gemm_speedup={min(gemm_sps):.2f} exact={str(exact).lower()}")


if __name__ == "__main__":
    main()
