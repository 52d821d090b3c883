"""SLIDE hash families and tables: LSH property, kernel/reference agreement, bucket bounds."""

import numpy as np
import pytest

from edgeslim.errors import InvalidParameterError, NotFittedError, UnknownNameError
from edgeslim.research.slide import _kernels as K_
from edgeslim.research.slide import _reference as R_
from edgeslim.research.slide.hashing import HASH_FAMILIES, HashConfig, LSHTables


def _pairs_at_cosine(rng, dim, cos, n):
    """n pairs (x, y) of Gaussian vectors with cos(x, y) == cos exactly."""
    x = rng.standard_normal((n, dim))
    u = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u -= (u * x).sum(1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = cos * x + np.sqrt(1 - cos**2) * u
    return x.astype(np.float32), y.astype(np.float32)


def _collision_rate(tables, x, y):
    return float((tables.codes(x) == tables.codes(y)).mean())


def test_simhash_collision_probability_follows_angle():
    rng = np.random.default_rng(1)
    t = LSHTables(HashConfig(family="simhash", K=2, L=64, seed=3), dim=64, backend="numba")
    rates = []
    for cos in (0.0, 0.5, 0.9, 0.99):
        x, y = _pairs_at_cosine(rng, 64, cos, 200)
        rate = _collision_rate(t, x, y)
        theory = (1 - np.arccos(cos) / np.pi) ** 2
        assert abs(rate - theory) < 0.04, (cos, rate, theory)
        rates.append(rate)
    assert all(b > a + 0.05 for a, b in zip(rates, rates[1:])), rates


def test_dwta_collision_probability_rises_with_overlap_on_sparse_vectors():
    rng = np.random.default_rng(2)
    dim, nnz, n = 512, 40, 200
    t = LSHTables(HashConfig(family="dwta", K=2, L=64, bin_size=8, seed=4), dim=dim, backend="numba")
    rates = []
    for shared in (0, 20, 36, 40):
        X = np.zeros((n, dim), np.float32)
        Y = np.zeros((n, dim), np.float32)
        for i in range(n):
            idx = rng.choice(dim, 2 * nnz - shared, replace=False)
            vals = rng.random(2 * nnz - shared).astype(np.float32) + 0.1
            X[i, idx[:nnz]] = vals[:nnz]
            Y[i, idx[nnz - shared:]] = vals[nnz - shared:]
        rates.append(_collision_rate(t, X, Y))
    assert all(b > a + 0.05 for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] == 1.0  # identical vectors always collide


@pytest.mark.parametrize("family", ["simhash", "dwta"])
def test_hash_codes_numba_equals_reference(family):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 32)).astype(np.float32)
    X[X < 0.3] = 0  # sparse-ish, exercises DWTA densification
    X[0] = 0  # all-empty vector
    t = LSHTables(HashConfig(family=family, K=5, L=7, bin_size=4, range_pow=9), dim=32, backend="numpy")
    ref = R_.hash_codes(X, *t.hash_args)
    got = K_.hash_codes(X, *t.hash_args)
    np.testing.assert_array_equal(got, ref)
    assert ref.min() >= 0 and ref.max() < t.n_buckets


def test_simhash_bulk_path_matches_kernel():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((1000, 16)).astype(np.float32)
    t = LSHTables(HashConfig(family="simhash", K=12, L=4, range_pow=10), dim=16, backend="numba")
    bulk = t.codes(W)  # > 256 rows: the BLAS path, with folding (12 bits -> 10)
    np.testing.assert_array_equal(bulk, K_.hash_codes(W, *t.hash_args))


@pytest.mark.parametrize("policy", [R_.FIFO, R_.RESERVOIR])
def test_build_tables_numba_equals_reference_and_buckets_are_bounded(policy):
    rng = np.random.default_rng(0)
    n, L, nb, bs = 500, 3, 8, 10
    codes = rng.integers(0, nb, size=(n, L))
    order = rng.permutation(n).astype(np.int64)
    out = []
    for k in (R_, K_):
        buckets = np.full((L, nb, bs), -1, np.int32)
        fill = np.zeros((L, nb), np.int32)
        k.build_tables(codes, order, buckets, fill, policy, 7)
        out.append((buckets, fill))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
    buckets, fill = out[0]
    assert fill.sum() == n * L  # every insertion counted
    for l in range(L):
        for b in range(nb):
            ids = buckets[l, b, : min(fill[l, b], bs)]
            assert len(ids) <= bs and len(set(ids.tolist())) == len(ids)
            assert np.all(codes[ids, l] == b)  # every stored id really hashes there
            arrivals = [i for i in order if codes[i, l] == b]
            if policy == R_.FIFO:  # FIFO keeps exactly the latest bs arrivals
                assert set(ids.tolist()) == set(arrivals[-bs:])


def test_reservoir_keeps_early_arrivals_fifo_does_not():
    n, bs = 2000, 20
    codes = np.zeros((n, 1), np.int64)  # everything in one bucket
    order = np.arange(n, dtype=np.int64)
    kept = {}
    for policy in (R_.FIFO, R_.RESERVOIR):
        buckets = np.zeros((1, 1, bs), np.int32)
        fill = np.zeros((1, 1), np.int32)
        K_.build_tables(codes, order, buckets, fill, policy, 3)
        kept[policy] = buckets[0, 0]
    assert kept[R_.FIFO].min() >= n - bs
    # a uniform sample of 0..1999 has mean ~1000; FIFO's mean is ~1990
    assert 600 < kept[R_.RESERVOIR].mean() < 1400


def test_tables_query_returns_neighbours():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3000, 32)).astype(np.float32)
    t = LSHTables(HashConfig(family="simhash", K=8, L=20, bucket_size=64), dim=32)
    with pytest.raises(NotFittedError):
        t.candidates(W[0])
    t.rebuild(W)
    hits = sum(int(i in t.candidates(W[i] + 0.05 * rng.standard_normal(32))) for i in range(50))
    assert hits >= 45  # a slightly perturbed row finds itself
    occ = t.occupancy()
    assert 0 < occ["nonempty_share"] <= 1 and occ["max"] <= 64


def test_config_errors_name_the_problem():
    with pytest.raises(UnknownNameError, match="dwta"):
        HashConfig(family="dwtaa").validate()
    with pytest.raises(InvalidParameterError, match="bin_size"):
        HashConfig(family="dwta", bin_size=6).validate()
    with pytest.raises(InvalidParameterError, match="policy"):
        HashConfig(policy="lru").validate()
    assert set(HASH_FAMILIES.names()) == {"simhash", "dwta"}
