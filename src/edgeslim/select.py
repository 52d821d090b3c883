"""Select: the fastest (or smallest) candidate within the budget, by margins its measured rounds support."""

from __future__ import annotations

import numpy as np

from .candidate import Candidate, Status
from .options import Objective

__all__ = ["MARGIN", "beats", "fid_below", "select", "confirm_candidates", "speed_twin"]

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


def speed_twin(c: Candidate, cands: list[Candidate]) -> Candidate:
    """The candidate whose measurement stands for `c`'s speed: the one it runs the same compute as
    (`info["same_compute_as"]`, e.g. bf16 weights widened to fp32 when the session loads run the fp32 graph), when
    that one was timed in the same rounds; else `c` itself. Two such candidates are one speed class: a lead between
    them is noise, so neither can win on speed alone."""
    twin_id = c.info.get("same_compute_as")
    twin = next((x for x in cands if x.id == twin_id), None)
    if twin is not None and twin is not c and twin.ratios and len(twin.ratios) == len(c.ratios):
        return twin
    return c


def _fid(c: Candidate) -> float:
    return c.fidelity.get("exact_match", 0.0)


def fid_below(a: Candidate, b: Candidate) -> bool:
    """Whether `a` agrees with the original on fewer outputs than `b` by more than sampling noise: the gap in their
    exact-match shares exceeds two standard errors of that gap (each share over its `samples`; treated as independent,
    which overstates the error of two shares scored on the same samples, so a gap called real is real). 0.933 vs
    0.953 on 150 lines (3 lines) is noise; 0.90 vs 1.00 is not. Without sample counts (older records) any gap counts."""
    pa, pb = _fid(a), _fid(b)
    na, nb = a.fidelity.get("samples"), b.fidelity.get("samples")
    if pa >= pb:
        return False
    if not na or not nb:
        return True
    return pb - pa > 2.0 * float(np.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb))


def _mb(c: Candidate) -> str:
    return f"{(c.size_bytes or 0) / 1e6:.2f} MB"


def _lost_latency(c: Candidate, pick: Candidate, fastest: Candidate, baseline: Candidate, cands: list[Candidate]) -> str:
    """One line: why `c` was not selected under the latency objective."""
    sc, sf, sp = speed_twin(c, cands), speed_twin(fastest, cands), speed_twin(pick, cands)
    pre = f"runs the same compute as {sc.id}, so it has {sc.id}'s speed; " if sc is not c else ""
    if c is not baseline and (sc.speedup or 0) < 1.0:
        return pre + f"slower than the original ({sc.speedup:.2f}x)"
    if sc is not sf and beats(sf, sc):
        r = [x / y for x, y in zip(sf.ratios, sc.ratios) if y > 0]
        return pre + (f"slower: {fastest.id} beats it by {float(np.median(r)):.2f}x (median per-round ratio, lower "
                      f"quartile {float(np.quantile(r, 0.25)):.2f} > 1)")
    tie = f"tied on speed with {pick.id}" + (" (same compute)" if sc is sp else f" (no supported {MARGIN:.2f}x margin)")
    if fid_below(c, pick):
        return pre + f"{tie}; lower fidelity ({_fid(c):.3f} vs {_fid(pick):.3f} of outputs identical to the original's)"
    if (c.size_bytes or 0) > (pick.size_bytes or 0):
        level = "" if _fid(c) == _fid(pick) else f" ({_fid(c):.3f} vs {_fid(pick):.3f}: within sampling noise)"
        return pre + f"{tie} and fidelity{level}; larger ({_mb(c)} vs {_mb(pick)})"
    return pre + f"{tie}, fidelity and size; {pick.id} measured faster"


def _lost_size(c: Candidate, pick: Candidate, baseline: Candidate) -> str:
    if c is not baseline and beats(baseline, c):
        return f"measurably slower than {baseline.id}"
    if (c.size_bytes or 0) > (pick.size_bytes or 0):
        return f"larger ({_mb(c)} vs {_mb(pick)})"
    return f"as small as {pick.id}; lower fidelity ({_fid(c):.3f} vs {_fid(pick):.3f})"


def select(cands: list[Candidate], baseline: Candidate, objective: str | Objective = Objective.LATENCY,
           ) -> tuple[Candidate | None, dict]:
    """Pick the candidate to deliver; returns it and how it was chosen, with one line per other timed candidate
    saying why it lost (`lost`).

    latency: start from the fastest (median ratio); every candidate it does not beat by a supported margin is a tie;
    ties go to fidelity (exact agreement with fp32, a gap counted only beyond sampling noise: `fid_below`), then
    size, then speed. Candidates that run the same compute are
    one speed class (`speed_twin`). A candidate slower than the baseline is never picked (the baseline itself is,
    when nothing beats it). size: the smallest candidate the baseline does not beat, ties to fidelity.
    """
    objective = Objective.parse(objective, "objective")
    speed = {c.id: speed_twin(c, cands) for c in cands}
    ok = [c for c in cands if c.status == Status.OK and c.ratios
          and (objective is not Objective.LATENCY or c is baseline or (speed[c.id].speedup or 0) >= 1.0)]
    if baseline.status == Status.OK and baseline.ratios and baseline not in ok:
        ok.append(baseline)
    if not ok:
        return None, {"rule": "no candidate passed and was timed"}
    timed = [c for c in cands if c.status == Status.OK and c.ratios]
    if objective is Objective.LATENCY:
        fastest = max(ok, key=lambda c: speed[c.id].speedup or 0)
        sf = speed[fastest.id]
        tied = [c for c in ok if speed[c.id] is sf or not beats(sf, speed[c.id])]
        most = max(tied, key=_fid)
        level = [c for c in tied if not fid_below(c, most)]
        pick = max(level, key=lambda c: (-(c.size_bytes or 0), _fid(c), c.speedup or 0))
        if len(ok) == 1:
            why = f"no candidate passed and ran at least as fast as {baseline.id}: the original is kept"
        else:
            why = (f"fastest {fastest.id} ({sf.speedup:.2f}x); " +
                   (f"it does not beat {', '.join(c.id for c in tied if c is not fastest)} by a {MARGIN:.2f}x margin "
                    f"its rounds support, so the tie went to fidelity, then size: {pick.id}" if len(tied) > 1
                    else "it beats every other timed candidate by a supported margin"))
        lost = {c.id: _lost_latency(c, pick, fastest, baseline, cands) for c in timed if c is not pick}
    else:
        fit = [c for c in ok if c is baseline or not beats(baseline, c)]
        pick = min(fit, key=lambda c: (c.size_bytes or 0, -_fid(c), -(c.speedup or 0)))
        tied, fastest = fit, pick
        why = f"smallest candidate not measurably slower than {baseline.id}: {pick.id}"
        lost = {c.id: _lost_size(c, pick, baseline) for c in timed if c is not pick}
    return pick, {"rule": f"objective {objective}; margin {MARGIN}x (median per-round ratio, lower quartile > 1)",
                  "fastest": fastest.id, "tied": [c.id for c in tied], "why": why, "lost": lost}


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
