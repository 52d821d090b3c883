"""Pure NumPy reference kernels for SLIDE (Chen et al., MLSys 2020).

Every function here has a numba twin with the identical signature in `_kernels.py`; the tests check
one against the other. These are written for clarity, one sample at a time, not for speed.

Hash-table layout shared by both backends: ``buckets[l, b, s]`` holds neuron ids, ``fill[l, b]``
counts insertions ever made into bucket ``b`` of table ``l`` (valid slots: ``min(fill, bucket_size)``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SIMHASH",
    "DWTA",
    "FIFO",
    "RESERVOIR",
    "hash_codes",
    "build_tables",
    "hidden_forward",
    "query_active",
    "batch_grads",
    "adam_rows",
    "topk_rows",
]

SIMHASH = 0
DWTA = 1
FIFO = 0
RESERVOIR = 1

_M32 = 0xFFFFFFFF
_MUL = 1540483477  # murmur2's multiplier; < 2**31 so products stay inside int64


def _mix(a: int, b: int) -> int:
    """Deterministic 31-bit mix of two ints (same arithmetic as the numba twin)."""
    a, b = int(a), int(b)
    x = ((a & _M32) * _MUL + (b & _M32) * 374761393 + 668265263) & _M32
    x ^= x >> 15
    x = (x * 1274126177) & _M32
    x ^= x >> 13
    return x & 0x7FFFFFFF


def _fold(key: int, nbits: int, range_pow: int) -> int:
    """Map a ``nbits``-bit concatenated code onto ``2**range_pow`` buckets."""
    if nbits <= range_pow:
        return key
    k32 = (key ^ (key >> 32)) & _M32
    return ((k32 * _MUL) & _M32) >> (32 - range_pow)


def _codes_one(x, family, proj, bins, K, L, range_pow, out, qshift=None):
    """Bucket index of vector ``x`` in each of the ``L`` tables (written into ``out``).

    ``qshift = c @ proj`` makes SimHash hash ``x - c`` (query centring); DWTA ignores it."""
    if family == SIMHASH:
        # signed random projections: bit = sign(<x, p>) (Charikar 2002)
        s = x.astype(np.float64) @ proj.astype(np.float64)
        if qshift is not None:
            s = s - qshift
        for l in range(L):
            key = 0
            for k in range(K):
                if s[l * K + k] > 0:
                    key |= 1 << k
            out[l] = _fold(key, K, range_pow)
        return
    # DWTA (Chen & Shrivastava, UAI 2018): winner-take-all over a random bin of coordinates,
    # empty bins borrow a non-empty bin's code through a fixed probe sequence (densification)
    nh = L * K
    bin_size = bins.shape[1]
    bits = int(bin_size).bit_length() - 1
    code = np.empty(nh, np.int64)
    empty = np.zeros(nh, np.bool_)
    for i in range(nh):
        best = 0
        bv = x[bins[i, 0]]
        for j in range(1, bin_size):
            v = x[bins[i, j]]
            if v > bv:
                bv = v
                best = j
        code[i] = best
        if bv == 0:
            allz = True
            for j in range(bin_size):
                if x[bins[i, j]] != 0:
                    allz = False
                    break
            empty[i] = allz
    for i in range(nh):
        if empty[i]:
            c = 0
            for attempt in range(1, 101):
                j = _mix(i, attempt) % nh
                if not empty[j]:
                    c = code[j]
                    break
            code[i] = c
    for l in range(L):
        key = 0
        for k in range(K):
            key |= int(code[l * K + k]) << (k * bits)
        out[l] = _fold(key, K * bits, range_pow)


def hash_codes(X, family, proj, bins, K, L, range_pow):
    """Bucket indices ``int64[n, L]`` of the rows of ``X`` (``float32[n, d]``)."""
    return _query_codes(X, family, proj, bins, K, L, range_pow, None)


def _query_codes(X, family, proj, bins, K, L, range_pow, qshift):
    n = X.shape[0]
    out = np.empty((n, L), np.int64)
    for r in range(n):
        _codes_one(X[r], family, proj, bins, K, L, range_pow, out[r], qshift)
    return out


def build_tables(codes, order, buckets, fill, policy, seed):
    """Clear the tables and insert neuron ``order[i]`` at ``codes[order[i]]`` for i = 0, 1, ...

    FIFO keeps the latest ``bucket_size`` arrivals of a bucket; reservoir sampling keeps a uniform
    sample of all arrivals (Vitter 1985), drawing from a deterministic hash of (seed, table, bucket, count).
    """
    L = buckets.shape[0]
    bs = buckets.shape[2]
    fill[:] = 0
    for l in range(L):
        for i in range(order.shape[0]):
            nid = order[i]
            b = codes[nid, l]
            c = fill[l, b]
            if c < bs:
                buckets[l, b, c] = nid
            elif policy == FIFO:
                buckets[l, b, c % bs] = nid
            else:
                r = _mix(_mix(seed, l), _mix(b, c)) % (c + 1)
                if r < bs:
                    buckets[l, b, r] = nid
            fill[l, b] = c + 1


def hidden_forward(x_indptr, x_idx, x_val, rows, W1, b1):
    """ReLU(sum_f val_f * W1[f] + b1) for each sample in ``rows`` -> ``float32[len(rows), H]``."""
    H = W1.shape[1]
    out = np.empty((rows.shape[0], H), np.float32)
    for s in range(rows.shape[0]):
        r = rows[s]
        h = b1.astype(np.float32).copy()
        for p in range(x_indptr[r], x_indptr[r + 1]):
            h += x_val[p] * W1[x_idx[p]]
        out[s] = np.maximum(h, 0)
    return out


def _active_one(codes, labels, buckets, fill, max_active):
    """Labels first (deduplicated), then LSH candidates by descending hit count, ties by first arrival."""
    act = []
    seen = set()
    for y in labels:
        if y not in seen:
            seen.add(int(y))
            act.append(int(y))
    cand = []
    cnt = {}
    bs = buckets.shape[2]
    for l in range(codes.shape[0] if max_active > 0 else 0):
        b = codes[l]
        for s in range(min(fill[l, b], bs)):
            nid = int(buckets[l, b, s])
            if nid in seen:
                continue
            if nid not in cnt:
                cnt[nid] = 0
                cand.append(nid)
            cnt[nid] += 1
    if len(cand) > max_active:
        keys = np.array([-cnt[c] for c in cand])
        keep = np.argsort(keys, kind="stable")[:max_active]
        cand = [cand[i] for i in np.sort(keep)]
    return np.array(act + cand, np.int64)


def query_active(x_indptr, x_idx, x_val, rows, y_indptr, y_idx, use_labels, W1, b1,
                 family, proj, bins, K, L, range_pow, qshift, buckets, fill, max_active, n_labels):
    """Active output neurons of each sample as CSR ``(indptr int64[n+1], ids int64[nnz])``; the hidden vectors are
    hashed centred (``qshift``, see `_codes_one`)."""
    Hs = hidden_forward(x_indptr, x_idx, x_val, rows, W1, b1)
    codes = _query_codes(Hs, family, proj, bins, K, L, range_pow, qshift)
    parts = []
    for s in range(rows.shape[0]):
        r = rows[s]
        labels = y_idx[y_indptr[r]:y_indptr[r + 1]] if use_labels else y_idx[:0]
        parts.append(_active_one(codes[s], labels, buckets, fill, max_active))
    indptr = np.zeros(rows.shape[0] + 1, np.int64)
    indptr[1:] = np.cumsum([p.shape[0] for p in parts])
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return indptr, ids.astype(np.int64)


def batch_grads(x_indptr, x_idx, x_val, rows, y_indptr, y_idx, W1, b1, W2, b2,
                G1, Gb1, G2, Gb2, touched1, touched2,
                family, proj, bins, K, L, range_pow, qshift, buckets, fill, max_active, n_random, rseed, n_chunks):
    """Accumulate the batch-mean gradient of softmax cross-entropy over each sample's active set.

    With ``n_random > 0`` the batch draws ``n_random`` neurons uniformly (deterministic in ``rseed``), shared by its
    samples as in sampled softmax, so they cost one pass over a few cached rows and one Adam update each; every sample
    adds those outside its own active set, whose logits get
    ``+log(#outside / #drawn)`` so that they stand in for the whole unsampled remainder in the
    softmax's normaliser (a stratified estimate of the partition function: the LSH set exactly,
    the rest by uniform sampling). ``n_random = 0`` is the paper's SLIDE.

    The target spreads mass 1/|labels| over the sample's labels. Only rows of ``W1`` (features present)
    and of ``W2`` (active neurons) are touched; ``touched*`` flags them for the sparse Adam step.
    Returns ``(summed loss, summed active-set size)``. ``n_chunks`` only matters to the numba twin.
    """
    B = rows.shape[0]
    loss = 0.0
    n_act = 0
    Hs = hidden_forward(x_indptr, x_idx, x_val, rows, W1, b1)
    codes = _query_codes(Hs, family, proj, bins, K, L, range_pow, qshift)
    for s in range(B):
        r = rows[s]
        labels = y_idx[y_indptr[r]:y_indptr[r + 1]]
        act = _active_one(codes[s], labels, buckets, fill, max_active)
        n_base = act.shape[0]
        off = 0.0
        if n_random > 0:
            inside = set(act.tolist())
            extra = []
            for i in range(n_random):
                j = _mix(rseed, i) % W2.shape[0]
                if j not in inside:
                    inside.add(j)
                    extra.append(j)
            if extra:
                off = float(np.float32(np.log((W2.shape[0] - n_base) / len(extra))))
                act = np.concatenate([act, np.array(extra, np.int64)])
        n_act += act.shape[0]
        n_lab = len(set(int(y) for y in labels))
        if n_lab == 0:
            continue
        h = Hs[s].astype(np.float32)
        z = W2[act] @ h + b2[act]
        z[n_base:] += np.float32(off)
        z = z - z.max()
        e = np.exp(z)
        p = e / e.sum()
        t = np.zeros_like(p)
        t[:n_lab] = 1.0 / n_lab
        loss += float(-(t[:n_lab] * np.log(np.maximum(p[:n_lab], 1e-30))).sum())
        g = ((p - t) / B).astype(np.float32)
        dh = g @ W2[act]
        G2[act] += g[:, None] * h[None, :]
        Gb2[act] += g
        touched2[act] = 1
        dh = dh * (h > 0)
        for q in range(x_indptr[r], x_indptr[r + 1]):
            f = x_idx[q]
            G1[f] += x_val[q] * dh
            touched1[f] = 1
        Gb1 += dh
    return loss, n_act


def adam_rows(W, M, V, G, touched, lr, beta1, beta2, eps, step):
    """Adam (Kingma & Ba 2015, torch's formulation) applied lazily: only rows with ``touched`` set.

    Untouched rows keep their moments frozen (as in TF LazyAdam / torch SparseAdam); the bias
    correction uses the global ``step``. Gradients and flags of updated rows are reset to zero.
    Returns the number of rows updated.
    """
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    n = 0
    for r in np.flatnonzero(touched):
        g = G[r]
        M[r] = beta1 * M[r] + (1 - beta1) * g
        V[r] = beta2 * V[r] + (1 - beta2) * g * g
        denom = np.sqrt(V[r]) / np.sqrt(bc2) + eps
        W[r] -= (lr / bc1) * M[r] / denom
        G[r] = 0
        touched[r] = 0
        n += 1
    return n


def topk_rows(S, k):
    """Indices of the ``k`` largest entries of each row, largest first, ties to the lower index."""
    return np.argsort(-S, axis=1, kind="stable")[:, :k].astype(np.int64)
