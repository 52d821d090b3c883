"""Selection for multi-objective evolution: non-dominated sorting (Deb et al., NSGA-II, IEEE TEVC 2002), NSGA-III's
reference-point niching (Deb & Jain, IEEE TEVC 2014), CARS's pNSGA-III protection of slowly improving models
(Yang et al., "CARS: Continuous Evolution for Efficient Neural Architecture Search", CVPR 2020, Sec. 3.3), and the
2-D hypervolume used to compare fronts.

All objectives are minimized (pass ``-accuracy``). Pure NumPy, deterministic: ties are broken by index.

pNSGA-III as implemented here: CARS observes that large networks learn more slowly under weight sharing, so a
selection on (accuracy, cost) alone drops them before they have caught up. It therefore sorts twice, once on
(-accuracy, costs) and once on (-accuracy growth, size), and merges the two sortings front by front (front i of
the merged order is the union of front i of each); the last merged front that does not fit whole is thinned by
NSGA-III niching on the first objectives.
"""

from __future__ import annotations

import itertools

import numpy as np

from ...errors import InvalidParameterError

__all__ = ["dominates", "non_dominated_sort", "reference_points", "nsga3_select", "pnsga3_select",
           "hypervolume_2d", "pareto_front"]


def _as_matrix(F) -> np.ndarray:
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2 or not np.all(np.isfinite(F)):
        raise InvalidParameterError(f"objectives must be a finite 2-D array (n points x m objectives); got shape "
                                    f"{F.shape}.")
    return F


def dominates(a, b) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one (minimization)."""
    a, b = np.asarray(a), np.asarray(b)
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated_sort(F) -> list[list[int]]:
    """Fronts of point indices, best first (NSGA-II's fast non-dominated sort); each front sorted by index.

    >>> non_dominated_sort([[1, 5], [2, 3], [3, 4], [4, 1], [5, 5]])
    [[0, 1, 3], [2], [4]]
    """
    F = _as_matrix(F)
    n = len(F)
    le = np.all(F[:, None, :] <= F[None, :, :], axis=2)
    lt = np.any(F[:, None, :] < F[None, :, :], axis=2)
    dom = le & lt  # dom[i, j]: i dominates j
    count = dom.sum(axis=0)  # how many dominate j
    fronts, current = [], [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(sorted(current))
        nxt = []
        for i in current:
            for j in np.flatnonzero(dom[i]):
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(int(j))
        current = nxt
    return fronts


def pareto_front(F) -> list[int]:
    """Indices of the non-dominated points."""
    return non_dominated_sort(F)[0] if len(F) else []


def reference_points(m: int, divisions: int) -> np.ndarray:
    """Das-Dennis points on the unit simplex in ``m`` dimensions with ``divisions`` steps (NSGA-III)."""
    if m < 1 or divisions < 1:
        raise InvalidParameterError(f"reference_points needs m >= 1 and divisions >= 1; got {m}, {divisions}.")
    pts = [c for c in itertools.product(range(divisions + 1), repeat=m) if sum(c) == divisions]
    return np.asarray(pts, dtype=np.float64) / divisions


def _niche(F: np.ndarray, chosen: list[int], last: list[int], k: int, divisions: int) -> list[int]:
    """Pick ``k`` of ``last`` by NSGA-III niching against the points already ``chosen``."""
    idx = chosen + last
    sub = F[idx]
    # Normalization: translate by the ideal point and scale by the range (the simplified form of NSGA-III's
    # intercepts, which need a non-degenerate hyperplane through the extreme points; small populations rarely give
    # one).
    lo, hi = sub.min(axis=0), sub.max(axis=0)
    Z = (sub - lo) / np.where(hi > lo, hi - lo, 1.0)
    refs = reference_points(F.shape[1], divisions)
    dirs = refs / np.linalg.norm(refs, axis=1, keepdims=True)
    proj = Z @ dirs.T  # length of each point's projection on each reference line
    dist = np.sqrt(np.maximum(0.0, (Z * Z).sum(axis=1, keepdims=True) - proj ** 2))
    assoc, d = dist.argmin(axis=1), dist.min(axis=1)
    count = np.bincount(assoc[:len(chosen)], minlength=len(refs))
    pool = list(range(len(chosen), len(idx)))
    picked: list[int] = []
    active = np.ones(len(refs), dtype=bool)
    while len(picked) < k:
        cand = np.flatnonzero(active)
        j = cand[np.argmin(count[cand])]  # least crowded reference line (lowest index on ties)
        members = [p for p in pool if assoc[p] == j]
        if not members:
            active[j] = False
            continue
        p = min(members, key=lambda q: (d[q], q)) if count[j] == 0 else min(members)
        picked.append(idx[p])
        pool.remove(p)
        count[j] += 1
    return picked


def nsga3_select(F, k: int, divisions: int = 6) -> list[int]:
    """Indices of ``k`` survivors: whole fronts in order, the last one thinned by reference-point niching.

    >>> nsga3_select([[1, 5], [2, 3], [3, 4], [4, 1], [5, 5]], 3)
    [0, 1, 3]
    """
    F = _as_matrix(F)
    return _select_by_fronts(F, non_dominated_sort(F), k, divisions)


def _select_by_fronts(F: np.ndarray, fronts: list[list[int]], k: int, divisions: int) -> list[int]:
    if not 0 <= k <= len(F):
        raise InvalidParameterError(f"cannot select {k} of {len(F)} points.")
    chosen: list[int] = []
    for front in fronts:
        if len(chosen) + len(front) <= k:
            chosen += front
        else:
            chosen += _niche(F, chosen, front, k - len(chosen), divisions)
        if len(chosen) == k:
            break
    return sorted(chosen)


def pnsga3_select(F, growth, size, k: int, divisions: int = 6) -> list[int]:
    """CARS's pNSGA-III: survivors by the merged fronts of two sortings, (objectives ``F``) and
    (``-growth``, ``size``); ``growth`` is each model's accuracy gain since the last generation.

    >>> # 3 is dominated on (error, size) but learns fastest: protected, where plain NSGA-III drops it
    >>> F = [[0.02, 1.0], [0.03, 0.5], [0.05, 0.2], [0.06, 2.0]]
    >>> nsga3_select(F, 3), pnsga3_select(F, [0.0, 0.0, 0.0, 0.04], [1.0, 0.5, 0.2, 2.0], 3)
    ([0, 1, 2], [0, 1, 3])
    """
    F = _as_matrix(F)
    G = _as_matrix(np.column_stack([-np.asarray(growth, np.float64), np.asarray(size, np.float64)]))
    if len(G) != len(F):
        raise InvalidParameterError(f"growth and size need one value per point ({len(F)}); got {len(G)}.")
    f1, f2 = non_dominated_sort(F), non_dominated_sort(G)
    merged, seen = [], set()
    for i in range(max(len(f1), len(f2))):
        front = sorted({p for fr in (f1[i] if i < len(f1) else [], f2[i] if i < len(f2) else []) for p in fr} - seen)
        if front:
            merged.append(front)
            seen.update(front)
    return _select_by_fronts(F, merged, k, divisions)


def hypervolume_2d(points, ref) -> float:
    """Area dominated by ``points`` (two minimized objectives) and bounded by ``ref``; points not better than
    ``ref`` in both objectives add nothing.

    >>> hypervolume_2d([[1, 3], [2, 2], [3, 1]], [4, 4])
    6.0
    """
    P = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    r = np.asarray(ref, dtype=np.float64)
    P = P[np.all(P < r, axis=1)]
    if not len(P):
        return 0.0
    P = P[np.argsort(P[:, 0], kind="stable")]
    area, best_y = 0.0, r[1]
    for x, y in P:
        if y < best_y:
            area += (r[0] - x) * (best_y - y)
            best_y = y
    return float(area)
