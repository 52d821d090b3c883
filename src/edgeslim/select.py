"""Select: the fastest (or smallest) candidate within the budget, by margins its measured rounds support."""

from __future__ import annotations

import numpy as np

from .candidate import Candidate, Status
from .options import Objective

__all__ = ["MARGIN", "beats", "select", "confirm_candidates"]

# ---- selection -----------------------------------------------------------------------------------------------

MARGIN = 1.05  # a candidate must be at least 5% faster (median of its per-round ratios) to beat another


def beats(a: Candidate, b: Candidate, margin: float = MARGIN) -> bool:
    """Whether `a` is faster than `b` by a margin its rounds support.

    Both were timed in the same rounds, so a/b's per-round ratio is ratios_a[r] / ratios_b[r] (each a ratio to the
    baseline of that round). `a` beats `b` when the median of those is >= `margin` and their lower quartile > 1:
    most rounds agree, not one lucky round.
    """
    r = [x / y for x, y in zip(a.ratios, b.ratios) if y > 0]
    if not r:
        return False
    return float(np.median(r)) >= margin and float(np.quantile(r, 0.25)) > 1.0


def select(cands: list[Candidate], baseline: Candidate, objective: str | Objective = Objective.LATENCY,
           ) -> tuple[Candidate | None, dict]:
    """Pick the candidate to deliver; returns it and how it was chosen.

    latency: start from the fastest (median ratio); every candidate it does not beat by a supported margin is a tie;
    ties go to fidelity (exact agreement with fp32), then size, then speed. A candidate slower than the baseline is
    never picked (the baseline itself is, when nothing beats it). size: the smallest candidate the baseline does not
    beat, ties to fidelity.
    """
    objective = Objective.parse(objective, "objective")
    ok = [c for c in cands if c.status == Status.OK and c.ratios
          and (objective is not Objective.LATENCY or c is baseline or (c.speedup or 0) >= 1.0)]
    if baseline.status == Status.OK and baseline.ratios and baseline not in ok:
        ok.append(baseline)
    if not ok:
        return None, {"rule": "no candidate passed and was timed"}
    fid = lambda c: c.fidelity.get("exact_match", 0.0)  # noqa: E731
    if objective is Objective.LATENCY:
        fastest = max(ok, key=lambda c: c.speedup or 0)
        tied = [c for c in ok if c is fastest or not beats(fastest, c)]
        pick = max(tied, key=lambda c: (fid(c), -(c.size_bytes or 0), c.speedup or 0))
        if len(ok) == 1:
            why = f"no candidate passed and ran at least as fast as {baseline.id}: the original is kept"
        else:
            why = (f"fastest {fastest.id} ({fastest.speedup:.2f}x); " +
                   (f"it does not beat {', '.join(c.id for c in tied if c is not fastest)} by a {MARGIN:.2f}x margin "
                    f"its rounds support, so the tie went to fidelity, then size: {pick.id}" if len(tied) > 1
                    else "it beats every other timed candidate by a supported margin"))
    else:
        fit = [c for c in ok if c is baseline or not beats(baseline, c)]
        pick = min(fit, key=lambda c: (c.size_bytes or 0, -fid(c), -(c.speedup or 0)))
        tied, fastest = fit, pick
        why = f"smallest candidate not measurably slower than {baseline.id}: {pick.id}"
    return pick, {"rule": f"objective {objective}; margin {MARGIN}x (median per-round ratio, lower quartile > 1)",
                  "fastest": fastest.id, "tied": [c.id for c in tied], "why": why}


def confirm_candidates(timed: list[Candidate], k: int) -> list[Candidate]:
    """The candidates the confirm phase re-measures: the `k` fastest in the screen, and every other candidate whose
    screen speedup lies inside the k-th's range of per-round ratios (the screen cannot tell it from the k-th, so
    leaving it out would decide on noise)."""
    ranked = sorted(timed, key=lambda c: -(c.speedup or 0))
    top = ranked[:k]
    if not top:
        return []
    kth = top[-1]
    floor = min(kth.speedup_range) if kth.speedup_range else kth.speedup or 0.0
    return top + [c for c in ranked[k:] if (c.speedup or 0.0) >= floor]
