"""ncnn's file formats, read and written in Python: the .param layer list, the .bin weight blobs, the int8
calibration table, and the int8 rewrite of a param/bin pair (what ncnn's `ncnn2table`/`ncnn2int8` tools do).

Kept apart from the engine (`edgeslim.engines.ncnn`), which converts and runs models: this module is pure data
handling and imports neither ncnn nor pnnx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ConversionError

__all__ = ["QUANT_TYPES", "unsupported_layers", "parse_param", "weight_scales", "write_table", "read_table",
           "codebook_weights", "codebooks", "codebook_errors", "kmeans_codebook",
           "quantize_int8"]

QUANT_TYPES = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
_QUANT_TYPES = QUANT_TYPES


def unsupported_layers(param: Path) -> list[str]:
    bad = []
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if parts and ("." in parts[0] or parts[0].startswith(("pnnx", "torch", "Tensor", "F."))):
            bad.append(parts[0])
    return sorted(set(bad))


_NO_WEIGHTS = {
    "AbsVal", "BinaryOp", "Cast", "Clip", "Concat", "Crop", "Deconvolution_no", "Dropout", "ELU", "Eltwise", "Erf",
    "ExpandDims", "Exp", "Flatten", "GELU", "GLU", "Gelu", "HardSigmoid", "HardSwish", "Input", "Interp", "Log",
    "LRN", "MatMul", "Mish", "MVN", "Noop", "Normalize_no", "Packing", "Padding", "Permute", "PixelShuffle",
    "Pooling", "Pooling1D", "Pooling3D", "Power", "ReLU", "Reduction", "Reorg", "Reshape", "Sigmoid", "Slice",
    "Softmax", "Softplus", "Split", "Squeeze", "Swish", "TanH", "Threshold", "Tile", "UnaryOp", "Unsqueeze",
    "CopyTo", "Flip", "Fold", "Unfold", "GridSample", "CumulativeSum", "Shrink", "SELU", "CELU", "Spectrogram",
}


class _Layer:
    def __init__(self, line: str) -> None:
        parts = line.split()
        self.type, self.name = parts[0], parts[1]
        nb, nt = int(parts[2]), int(parts[3])
        self.bottoms = parts[4 : 4 + nb]
        self.tops = parts[4 + nb : 4 + nb + nt]
        self.head = parts[: 4 + nb + nt]
        self.params = parts[4 + nb + nt :]
        self.p: dict[int, str] = {}
        for tok in self.params:
            k, _, v = tok.partition("=")
            try:
                self.p[int(k)] = v
            except ValueError:
                pass

    def i(self, key: int, default: int = 0) -> int:
        v = self.p.get(key)
        return int(float(v)) if v is not None and "," not in v and '"' not in v else default

    def line(self) -> str:
        return " ".join(self.head + self.params)


def _parse_param(param_text: str) -> tuple[list[str], list[_Layer]]:
    lines = [l for l in param_text.splitlines() if l.strip()]
    return lines[:2], [_Layer(l) for l in lines[2:]]


class _Bin:
    """Reads ncnn weight blobs in load order: type 0 = tagged (fp32/fp16/int8), type 1 = raw fp32."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def raw(self, n: int) -> np.ndarray:
        a = np.frombuffer(self.data, np.float32, n, self.pos)
        self.pos += 4 * n
        return a

    def tagged(self, n: int) -> np.ndarray:
        tag = int(np.frombuffer(self.data, np.uint32, 1, self.pos)[0])
        self.pos += 4
        if tag == 0:
            return self.raw(n)
        if tag == 0x01306B47:
            a = np.frombuffer(self.data, np.float16, n, self.pos).astype(np.float32)
            self.pos += (2 * n + 3) // 4 * 4
            return a
        if tag == CODEBOOK_TAG:
            table = np.frombuffer(self.data, np.float32, 256, self.pos)
            idx = np.frombuffer(self.data, np.uint8, n, self.pos + 1024)
            self.pos += 1024 + (n + 3) // 4 * 4
            return table[idx]
        raise ConversionError(f"ncnn int8: weight blob with tag {tag:#x} at byte {self.pos - 4}; expected fp32 or fp16 "
                              "weights. Convert from ONNX again.")


def _blobs(layer: _Layer, b: _Bin) -> list[tuple[int, np.ndarray]]:
    """The weight blobs one layer loads, as (type, data), in order; raises for a layer whose layout we do not know."""
    t, i = layer.type, layer.i
    if t in _NO_WEIGHTS:
        return []
    if t in ("Convolution", "ConvolutionDepthWise", "InnerProduct", "Deconvolution", "DeconvolutionDepthWise",
             "Convolution1D", "ConvolutionDepthWise1D"):
        size_key, bias_key = (2, 1) if t == "InnerProduct" else (6, 5)
        if i(8 if t != "InnerProduct" else 8):
            raise ConversionError(f"ncnn int8: layer {layer.name} is already int8. Convert from ONNX again.")
        out = [(0, b.tagged(i(size_key)))]
        if i(bias_key):
            out.append((1, b.raw(i(0))))
        return out
    if t == "LayerNorm":
        return [(1, b.raw(i(0))), (1, b.raw(i(0)))] if i(2, 1) else []
    if t in ("BatchNorm",):
        return [(1, b.raw(i(0))) for _ in range(4)]
    if t in ("Scale",):
        return [(1, b.raw(i(0)))] + ([(1, b.raw(i(0)))] if i(1) else [])
    if t in ("PReLU",):
        return [(1, b.raw(max(i(0), 1)))]
    if t == "Bias":
        return [(1, b.raw(i(0)))]
    if t == "MemoryData":
        n = max(i(0), 1) * max(i(1), 1) * max(i(11), 1) * max(i(2), 1)
        return [(1, b.raw(n))]
    if t == "Gemm":
        out = []
        m_, n_, k_ = i(7), i(8), i(9)
        if i(18):
            raise ConversionError(f"ncnn int8: layer {layer.name} is already int8. Convert from ONNX again.")
        if i(4):
            out.append((0, b.tagged(m_ * k_)))
        if i(5):
            out.append((0, b.tagged(n_ * k_)))
        if i(6) and i(10, 0) != -1:  # ncnn loads C only when its broadcast type (default 0) is not -1
            bt = i(10)
            n = {0: 1, 1: m_, 2: m_, 3: m_ * n_, 4: n_}.get(bt)
            if n is None:
                raise ConversionError(f"ncnn int8: Gemm {layer.name} has constant C broadcast type {bt}, unknown here.")
            out.append((0, b.tagged(n)))  # Gemm loads C with type 0 (tagged)
        return out
    if t == "MultiHeadAttention":
        e, w = i(0), i(2)
        q = w // max(e, 1)
        kd, vd = i(3, e), i(4, e)
        return [(0, b.tagged(w)), (1, b.raw(e)), (0, b.tagged(e * kd)), (1, b.raw(e)), (0, b.tagged(e * vd)),
                (1, b.raw(e)), (0, b.tagged(q * e)), (1, b.raw(q))]
    raise ConversionError(f"ncnn int8: layer type {t} ({layer.name}) has a weight layout edgeslim does not know. "
                          "Use precision bf16 or fp32 for this model.")


def _per_out(layer: _Layer) -> int:
    return layer.i(7, 1) if layer.type == "ConvolutionDepthWise" else layer.i(0)


def weight_scales(param_text: str, bin_data: bytes) -> dict[str, np.ndarray]:
    """ncnn's per-output-channel weight scales (127 / absmax) of every quantizable layer."""
    _, layers = _parse_param(param_text)
    b = _Bin(bin_data)
    scales = {}
    for L in layers:
        blobs = _blobs(L, b)
        if L.type in _QUANT_TYPES:
            w = blobs[0][1].reshape(_per_out(L), -1)
            amax = np.abs(w).max(axis=1)
            scales[L.name] = np.where(amax > 0, 127.0 / np.maximum(amax, 1e-30), 1.0).astype(np.float32)
    return scales


def write_table(path: Path, weight: dict[str, np.ndarray], bottom: dict[str, float]) -> Path:
    """ncnn's calibration table: `<layer>_param_0 <scale per output channel>` lines, then `<layer> <input scale>`."""
    lines = [f"{name}_param_0 " + " ".join(f"{s:.9g}" for s in sc) for name, sc in weight.items()]
    lines += [f"{name} {s:.9g}" for name, s in bottom.items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def read_table(path: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    weight, bottom = {}, {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0].endswith("_param_0"):
            weight[parts[0][: -len("_param_0")]] = np.array([float(v) for v in parts[1:]], np.float32)
        else:
            bottom[parts[0]] = float(parts[1])
    return weight, bottom


def quantize_int8(param_text: str, bin_data: bytes, table: Path) -> tuple[str, bytes, list[str]]:
    """Rewrite an fp32 param/bin pair so the layers named in the table run in int8 (ncnn2int8's output format)."""
    head, layers = _parse_param(param_text)
    wsc, bsc = read_table(table)
    b = _Bin(bin_data)
    out = bytearray()
    done = []
    for L in layers:
        start = b.pos
        blobs = _blobs(L, b)
        if L.type in _QUANT_TYPES and L.name in wsc and L.name in bsc:
            w = blobs[0][1].reshape(_per_out(L), -1)
            s = wsc[L.name]
            q = np.clip(np.rint(w * s[:, None]), -127, 127).astype(np.int8).reshape(-1)
            out += np.uint32(0x000D4B38).tobytes() + q.tobytes() + b"\0" * ((-q.size) % 4)
            for _, data in blobs[1:]:
                out += np.asarray(data, np.float32).tobytes()
            out += s.astype(np.float32).tobytes() + np.float32(bsc[L.name]).tobytes()
            L.params.append(f"8={1 if L.type == 'ConvolutionDepthWise' else 2}")
            done.append(L.name)
        else:
            out += bin_data[start : b.pos]
    text = "\n".join(head + [L.line() for L in layers]) + "\n"
    return text, bytes(out), done



CODEBOOK_TAG = 0x00000001  # any tag ncnn does not reserve with a non-zero byte: a 256-entry table + uint8 indices
CODEBOOK_MIN_SIZE = 1024  # smaller blobs stay as they are: the 1 KiB table would outweigh the saving


def kmeans_codebook(w: np.ndarray, levels: int = 256, iters: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D k-means codebook of `w`: (table float32[levels], index uint8[w.size]).

    Starts from three quarters of the levels at quantiles (dense regions get more levels) and a quarter spread
    uniformly over [min, max] (the tails keep levels of their own: a classifier's few largest weights decide its
    logits, and quantile levels alone left them 80% off on PP-OCRv4's last layer), then runs Lloyd steps on the
    sorted values; each level is the mean of the values it codes.
    """
    v = np.asarray(w, np.float32).ravel()
    order = np.argsort(v, kind="stable")
    sv = v[order].astype(np.float64)
    nq = levels * 3 // 4
    table = np.unique(np.concatenate([np.quantile(sv, (np.arange(nq) + 0.5) / nq),
                                      np.linspace(sv[0], sv[-1], levels - nq)]))

    def cells(t: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.searchsorted(sv, (t[1:] + t[:-1]) / 2), [sv.size]])

    for _ in range(iters):
        bounds = cells(table)
        counts = np.diff(bounds)
        keep = counts > 0
        sums = np.add.reduceat(sv, bounds[:-1][keep])
        table = sums / counts[keep]
    bounds = cells(table)
    idx_sorted = np.repeat(np.arange(table.size, dtype=np.uint8), np.diff(bounds))
    idx = np.empty(v.size, np.uint8)
    idx[order] = idx_sorted
    full = np.zeros(levels, np.float32)
    full[: table.size] = table
    return full, idx


Codebooks = dict[tuple[str, int], tuple[np.ndarray, np.ndarray, float]]


def codebooks(param_text: str, bin_data: bytes, min_size: int = CODEBOOK_MIN_SIZE) -> Codebooks:
    """The 8-bit codebook of every tagged weight blob of at least `min_size` values:
    `{(layer name, blob index): (table, indices, relative RMS error)}`. Computed once and reused by every trial of a
    search (`codebook_weights(..., codes=)`)."""
    _, layers = _parse_param(param_text)
    b = _Bin(bin_data)
    out: Codebooks = {}
    for L in layers:
        for k, (t, d) in enumerate(_blobs(L, b)):
            if t == 0 and d.size >= min_size:
                table, idx = kmeans_codebook(d)
                out[(L.name, k)] = (table, idx, _relative_rms(table[idx], d))
    return out


def codebook_errors(codes: Codebooks) -> dict[str, float]:
    """Relative RMS error of each codable layer's weights under its codebook (the worst blob of the layer counts)."""
    out: dict[str, float] = {}
    for (name, _), (_, _, err) in codes.items():
        out[name] = max(out.get(name, 0.0), err)
    return out


def _relative_rms(approx: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(np.sqrt(np.mean((approx - ref) ** 2)) / max(np.sqrt(np.mean(ref**2)), 1e-30))


def codebook_weights(param_text: str, bin_data: bytes, min_size: int = CODEBOOK_MIN_SIZE,
                     skip: set[str] = frozenset(), codes: Codebooks | None = None) -> tuple[bytes, dict]:
    """Store every tagged weight blob of at least `min_size` values as an 8-bit codebook (ncnn's quantized-weight
    format: a flag word, 256 float32 table entries, one uint8 index per value, padded to 4 bytes).

    ncnn expands the table to float at load, so the model runs at the precision its options choose (bf16 storage
    here) with weights 4x smaller on disk than fp32. Why a k-means codebook rather than uniform int8: it is the
    format ncnn reads for float layers, and a non-uniform table puts its levels where the weights are.
    Layers named in `skip` keep their blobs as they are; `codes` (from `codebooks`, same `min_size`) saves computing
    them again. Info: blobs coded, bytes before and after, and the worst relative RMS error of a coded blob.
    """
    codes = codebooks(param_text, bin_data, min_size) if codes is None else codes
    _, layers = _parse_param(param_text)
    b = _Bin(bin_data)
    out = bytearray()
    coded, worst = 0, 0.0
    for L in layers:
        start = b.pos
        blobs = _blobs(L, b)
        if L.name in skip or not any((L.name, k) in codes for k in range(len(blobs))):
            out += bin_data[start : b.pos]
            continue
        for k, (t, d) in enumerate(blobs):
            if (L.name, k) in codes:
                table, idx, err = codes[(L.name, k)]
                worst = max(worst, err)
                out += np.uint32(CODEBOOK_TAG).tobytes() + table.tobytes() + idx.tobytes() + b"\0" * ((-idx.size) % 4)
                coded += 1
            elif t == 1:
                out += np.asarray(d, np.float32).tobytes()
            else:
                out += np.uint32(0).tobytes() + np.asarray(d, np.float32).tobytes()
    return bytes(out), {"coded_blobs": coded, "bytes_before": len(bin_data), "bytes_after": len(out),
                        "worst_relative_rms_error": round(worst, 5)}


parse_param = _parse_param
