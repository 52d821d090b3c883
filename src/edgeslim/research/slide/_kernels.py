"""numba kernels for SLIDE (Chen et al., MLSys 2020); same signatures as `_reference.py`.

`batch_grads` runs HOGWILD (Recht et al., NeurIPS 2011): samples are split into ``n_chunks`` chunks
run in parallel with ``prange``; every chunk adds its gradients into the shared buffers without
locks. Rows touched by two chunks at once may lose a tiny fraction of an update, which SGD tolerates.
Per-sample work is on the active set only: O(nnz(x) * H + |active| * H + L * K * H).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["hash_codes", "build_tables", "hidden_forward", "query_active", "batch_grads", "adam_rows",
           "topk_rows"]

SIMHASH = 0
DWTA = 1
FIFO = 0
_M32 = 0xFFFFFFFF
_MUL = 1540483477


@njit(cache=True, inline="always")
def _mix(a, b):
    x = ((a & _M32) * _MUL + (b & _M32) * 374761393 + 668265263) & _M32
    x ^= x >> 15
    x = (x * 1274126177) & _M32
    x ^= x >> 13
    return x & 0x7FFFFFFF


@njit(cache=True, inline="always")
def _fold(key, nbits, range_pow):
    if nbits <= range_pow:
        return key
    k32 = (key ^ (key >> 32)) & _M32
    return ((k32 * _MUL) & _M32) >> (32 - range_pow)


@njit(cache=True)
def _codes_one(x, family, proj, bins, K, L, range_pow, qshift, out, s, code, empty):
    """``s`` (float64[L*K]), ``code`` (int64[L*K]), ``empty`` (bool[L*K]) are scratch. SimHash hashes
    ``x - c`` where ``qshift = c @ proj`` (query centring; zeros hash ``x`` itself); DWTA ignores ``qshift``."""
    nh = L * K
    if family == SIMHASH:
        for j in range(nh):
            s[j] = -qshift[j]
        d = x.shape[0]
        for i in range(d):
            xi = np.float64(x[i])
            if xi != 0.0:  # hidden ReLU outputs are ~half zeros: skip their projection rows
                for j in range(nh):
                    s[j] += xi * proj[i, j]
        for l in range(L):
            key = 0
            for k in range(K):
                if s[l * K + k] > 0:
                    key |= 1 << k
            out[l] = _fold(key, K, range_pow)
        return
    bin_size = bins.shape[1]
    bits = 0
    while (1 << (bits + 1)) <= bin_size:
        bits += 1
    for i in range(nh):
        best = 0
        bv = x[bins[i, 0]]
        for j in range(1, bin_size):
            v = x[bins[i, j]]
            if v > bv:
                bv = v
                best = j
        code[i] = best
        allz = False
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
            key |= code[l * K + k] << (k * bits)
        out[l] = _fold(key, K * bits, range_pow)


@njit(cache=True, parallel=True)
def hash_codes(X, family, proj, bins, K, L, range_pow):
    n = X.shape[0]
    out = np.empty((n, L), np.int64)
    nh = L * K
    nchunk = 64
    for c in prange(nchunk):
        s = np.empty(nh, np.float64)
        code = np.empty(nh, np.int64)
        empty = np.empty(nh, np.bool_)
        zero = np.zeros(nh, np.float64)
        for r in range(c, n, nchunk):
            _codes_one(X[r], family, proj, bins, K, L, range_pow, zero, out[r], s, code, empty)
    return out


@njit(cache=True, parallel=True)
def build_tables(codes, order, buckets, fill, policy, seed):
    L = buckets.shape[0]
    bs = buckets.shape[2]
    for l in prange(L):  # tables are independent: one writer per table, no races
        fill[l, :] = 0
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


@njit(cache=True, inline="always")
def _hidden_one(x_indptr, x_idx, x_val, r, W1, b1, h):
    H = h.shape[0]
    for j in range(H):
        h[j] = b1[j]
    for p in range(x_indptr[r], x_indptr[r + 1]):
        v = x_val[p]
        w = W1[x_idx[p]]
        for j in range(H):
            h[j] += v * w[j]
    for j in range(H):
        if h[j] < 0:
            h[j] = 0


@njit(cache=True, parallel=True)
def hidden_forward(x_indptr, x_idx, x_val, rows, W1, b1):
    H = W1.shape[1]
    out = np.empty((rows.shape[0], H), np.float32)
    for s in prange(rows.shape[0]):
        _hidden_one(x_indptr, x_idx, x_val, rows[s], W1, b1, out[s])
    return out


@njit(cache=True)
def _active_one(codes, y_idx, y_lo, y_hi, buckets, fill, max_active, pos, cand, cnt, hist, act):
    """Writes the active set into ``act``; returns (size, number of distinct labels).

    ``pos`` (int32[n_labels], all zero on entry and exit) marks labels with -1 and candidates with
    their index + 1; ``cand``/``cnt`` hold candidates in first-arrival order and their hit counts.
    """
    n = 0
    for q in range(y_lo, y_hi):
        y = y_idx[q]
        if pos[y] == 0:
            pos[y] = -1
            act[n] = y
            n += 1
    n_lab = n
    nc = 0
    bs = buckets.shape[2]
    L = codes.shape[0]
    if max_active == 0:  # no LSH candidates (the uniform-negatives-only trainer)
        L = 0
    for l in range(L):
        b = codes[l]
        m = fill[l, b]
        if m > bs:
            m = bs
        for s in range(m):
            nid = buckets[l, b, s]
            p = pos[nid]
            if p == 0:
                cand[nc] = nid
                cnt[nc] = 1
                nc += 1
                pos[nid] = nc
            elif p > 0:
                cnt[p - 1] += 1
    if nc <= max_active:
        for i in range(nc):
            act[n] = cand[i]
            n += 1
    else:
        # keep the max_active most-hit candidates; ties go to earlier arrivals (stable)
        hist[:] = 0
        for i in range(nc):
            hist[cnt[i]] += 1
        need = max_active
        thr = L
        while thr > 0 and hist[thr] < need:
            need -= hist[thr]
            thr -= 1
        # all with count > thr, then the first `need` with count == thr
        for i in range(nc):
            c = cnt[i]
            if c > thr:
                act[n] = cand[i]
                n += 1
            elif c == thr and need > 0:
                act[n] = cand[i]
                n += 1
                need -= 1
    for i in range(n_lab):
        pos[act[i]] = 0
    for i in range(nc):
        pos[cand[i]] = 0
    return n, n_lab


@njit(cache=True)
def query_active(x_indptr, x_idx, x_val, rows, y_indptr, y_idx, use_labels, W1, b1,
                 family, proj, bins, K, L, range_pow, qshift, buckets, fill, max_active, n_labels):
    n = rows.shape[0]
    H = W1.shape[1]
    pos = np.zeros(n_labels, np.int32)
    cap_c = L * buckets.shape[2]
    cand = np.empty(cap_c, np.int64)
    cnt = np.empty(cap_c, np.int64)
    hist = np.empty(L + 1, np.int64)
    nh = L * K
    sc = np.empty(nh, np.float64)
    code = np.empty(nh, np.int64)
    empty = np.empty(nh, np.bool_)
    h = np.empty(H, np.float32)
    codes = np.empty(L, np.int64)
    parts = []
    sizes = np.zeros(n + 1, np.int64)
    for s in range(n):
        r = rows[s]
        _hidden_one(x_indptr, x_idx, x_val, r, W1, b1, h)
        _codes_one(h, family, proj, bins, K, L, range_pow, qshift, codes, sc, code, empty)
        lo = y_indptr[r]
        hi = y_indptr[r + 1] if use_labels else lo
        act = np.empty(hi - lo + max_active, np.int64)
        m, _ = _active_one(codes, y_idx, lo, hi, buckets, fill, max_active, pos, cand, cnt, hist, act)
        parts.append(act[:m].copy())
        sizes[s + 1] = sizes[s] + m
    ids = np.empty(sizes[n], np.int64)
    for s in range(n):
        ids[sizes[s]:sizes[s + 1]] = parts[s]
    return sizes, ids


@njit(cache=True, parallel=True, fastmath=True)
def batch_grads(x_indptr, x_idx, x_val, rows, y_indptr, y_idx, W1, b1, W2, b2,
                G1, Gb1, G2, Gb2, touched1, touched2,
                family, proj, bins, K, L, range_pow, qshift, buckets, fill, max_active, n_random, rseed, n_chunks):
    B = rows.shape[0]
    H = W1.shape[1]
    n_labels = W2.shape[0]
    max_lab = 0
    for s in range(B):
        r = rows[s]
        if y_indptr[r + 1] - y_indptr[r] > max_lab:
            max_lab = y_indptr[r + 1] - y_indptr[r]
    cap = max_lab + max_active + n_random
    cap_c = L * buckets.shape[2]
    nh = L * K
    loss_c = np.zeros(n_chunks, np.float64)
    act_c = np.zeros(n_chunks, np.int64)
    gb1_c = np.zeros((n_chunks, H), np.float32)  # per chunk: every sample writes all of it
    inv_b = np.float32(1.0 / B)
    for c in prange(n_chunks):
        pos = np.zeros(n_labels, np.int32)
        cand = np.empty(cap_c, np.int64)
        cnt = np.empty(cap_c, np.int64)
        hist = np.empty(L + 1, np.int64)
        sc = np.empty(nh, np.float64)
        code = np.empty(nh, np.int64)
        empty = np.empty(nh, np.bool_)
        h = np.empty(H, np.float32)
        dh = np.empty(H, np.float32)
        codes = np.empty(L, np.int64)
        act = np.empty(cap, np.int64)
        z = np.empty(cap, np.float32)
        lo_s = (B * c) // n_chunks
        hi_s = (B * (c + 1)) // n_chunks
        for s in range(lo_s, hi_s):
            r = rows[s]
            _hidden_one(x_indptr, x_idx, x_val, r, W1, b1, h)
            if max_active > 0:
                _codes_one(h, family, proj, bins, K, L, range_pow, qshift, codes, sc, code, empty)
            n, n_lab = _active_one(codes, y_idx, y_indptr[r], y_indptr[r + 1], buckets, fill,
                                   max_active, pos, cand, cnt, hist, act)
            n_base = n
            off = np.float32(0.0)
            if n_random > 0:
                for a in range(n):
                    pos[act[a]] = 1
                for i in range(n_random):  # one draw per batch, shared by its samples
                    j = _mix(rseed, i) % n_labels
                    if pos[j] == 0:
                        pos[j] = 1
                        act[n] = j
                        n += 1
                for a in range(n):
                    pos[act[a]] = 0
                if n > n_base:
                    off = np.float32(np.log((n_labels - n_base) / (n - n_base)))
            act_c[c] += n
            if n_lab == 0:
                continue
            zmax = np.float32(-3.0e38)
            for a in range(n):
                w = W2[act[a]]
                acc = b2[act[a]]
                for j in range(H):
                    acc += w[j] * h[j]
                if a >= n_base:
                    acc += off
                z[a] = acc
                if acc > zmax:
                    zmax = acc
            tot = np.float32(0.0)
            for a in range(n):
                z[a] = np.exp(z[a] - zmax)
                tot += z[a]
            t = np.float32(1.0 / n_lab)
            lsum = 0.0
            for a in range(n_lab):
                lsum -= np.log(max(z[a] / tot, 1e-30))
            loss_c[c] += lsum * t
            for j in range(H):
                dh[j] = 0
            for a in range(n):
                g = z[a] / tot
                if a < n_lab:
                    g -= t
                g *= inv_b
                nid = act[a]
                w = W2[nid]
                gw = G2[nid]
                for j in range(H):
                    dh[j] += g * w[j]
                    gw[j] += g * h[j]
                Gb2[nid] += g
                touched2[nid] = 1
            for j in range(H):
                if h[j] <= 0:
                    dh[j] = 0
            for q in range(x_indptr[r], x_indptr[r + 1]):
                f = x_idx[q]
                v = x_val[q]
                g1 = G1[f]
                for j in range(H):
                    g1[j] += v * dh[j]
                touched1[f] = 1
            for j in range(H):
                gb1_c[c, j] += dh[j]
    for c in range(n_chunks):
        for j in range(H):
            Gb1[j] += gb1_c[c, j]
    return loss_c.sum(), act_c.sum()


@njit(cache=True, parallel=True, fastmath=True)
def adam_rows(W, M, V, G, touched, lr, beta1, beta2, eps, step):
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    idx = np.flatnonzero(touched)
    a = np.float32(lr / bc1)
    isb = np.float32(1.0 / np.sqrt(bc2))
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    e = np.float32(eps)
    for i in prange(idx.shape[0]):
        r = idx[i]
        w = W[r]
        m = M[r]
        v = V[r]
        g = G[r]
        for j in range(W.shape[1]):
            gj = g[j]
            m[j] = b1 * m[j] + (1 - b1) * gj
            v[j] = b2 * v[j] + (1 - b2) * gj * gj
            w[j] -= a * m[j] / (np.sqrt(v[j]) * isb + e)
            g[j] = 0
        touched[r] = 0
    return idx.shape[0]


@njit(cache=True, parallel=True)
def topk_rows(S, k):
    n, m = S.shape
    out = np.empty((n, k), np.int64)
    for r in prange(n):
        vals = np.full(k, -np.inf, np.float64)
        idx = np.full(k, -1, np.int64)
        row = S[r]
        for j in range(m):
            v = row[j]
            if v > vals[k - 1]:  # strict: an equal later entry never displaces an earlier one
                p = k - 1
                while p > 0 and v > vals[p - 1]:
                    vals[p] = vals[p - 1]
                    idx[p] = idx[p - 1]
                    p -= 1
                vals[p] = v
                idx[p] = j
        out[r] = idx
    return out
