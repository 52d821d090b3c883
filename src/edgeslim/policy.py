"""The thread-pool policy: one value, resolved once, that engines, benchmark workers and deploy.json receive.

`dedicated`: pool threads spin between runs (fastest on an otherwise idle CPU). `shared`: they sleep at once (fastest
when other work competes for the cores). Measured, not assumed: on a 2-core machine the ranking of two engines can
flip between the two (see BENCHMARKS.md), so a study selects under one and reports the other beside it.
"""

from __future__ import annotations

from enum import Enum

from .errors import InvalidParameterError

__all__ = ["StrEnum", "ThreadPolicy"]


class StrEnum(str, Enum):
    """A string-valued enum whose members print, format and serialise (JSON) as their value (as Python 3.11's
    `enum.StrEnum`, which 3.10 lacks)."""

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def parse(cls, value: str | StrEnum, option: str, advice: str = ""):
        """The member named `value`; anything else is an `InvalidParameterError` naming `option` and the choices."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidParameterError(f"{option} {value!r} is not one of {choices}.{' ' + advice if advice else ''}") from None


# libgomp (ncnn's OpenMP in the PyPI wheel) with OMP_WAIT_POLICY=ACTIVE spins about 3e10 times before sleeping, so
# an idle ncnn worker would keep threads-1 cores busy while every other candidate is timed. Measured on a 2.6 GHz
# x86 core: 3e5 spins (libgomp's default) last ~8 ms, 3e6 ~75 ms, 1e7 ~250 ms. 3e6 spins through back-to-back runs
# and parks within the pause before the next worker. The shared policy spins 0 times (libgomp's PASSIVE).
_GOMP_SPINCOUNT = {"dedicated": "3000000", "shared": "0"}


class ThreadPolicy(StrEnum):
    DEDICATED = "dedicated"
    SHARED = "shared"

    @classmethod
    def of(cls, value: str | ThreadPolicy, option: str = "CPU policy") -> ThreadPolicy:
        return cls.parse(value, option, "Use dedicated on an otherwise idle CPU, shared when other work competes for "
                                        "the cores.")

    @property
    def spins(self) -> bool:
        return self is ThreadPolicy.DEDICATED

    @property
    def other(self) -> ThreadPolicy:
        return ThreadPolicy.SHARED if self.spins else ThreadPolicy.DEDICATED

    @property
    def omp_wait_policy(self) -> str:
        """Read once, when an OpenMP runtime loads (ncnn's import): it belongs in a fresh process's environment."""
        return "ACTIVE" if self.spins else "PASSIVE"

    def env(self) -> dict[str, str]:
        """Environment variables a fresh process needs before any engine loads."""
        return {"OMP_WAIT_POLICY": self.omp_wait_policy, "GOMP_SPINCOUNT": _GOMP_SPINCOUNT[self.value]}

    def to_dict(self) -> dict:
        """What each engine's own API needs to reproduce the policy, as deploy.json records it (`runtime.thread_policy`).

        `ncnn_openmp_blocktime` (`net.opt.openmp_blocktime`, ms) only reaches LLVM/Intel OpenMP builds: GCC's libgomp,
        which the PyPI ncnn wheel bundles, follows OMP_WAIT_POLICY."""
        flag = "1" if self.spins else "0"
        return {"policy": self.value, "OMP_WAIT_POLICY": self.omp_wait_policy,
                "ort_session_config": {"session.intra_op.allow_spinning": flag, "session.inter_op.allow_spinning": flag},
                "ncnn_openmp_blocktime": 20 if self.spins else 0}
