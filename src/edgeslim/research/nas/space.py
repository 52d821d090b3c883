"""The search space: a MobileNetV2-style network of inverted-residual blocks (Sandler et al., CVPR 2018), searched
per stage for width multiplier and depth, and per block for depthwise kernel (3/5/7) and expansion ratio.

An architecture is a flat tuple of integer genes, so mutation and crossover are plain list operations; per stage the
genes are ``[width index, depth, (kernel index, expansion index) x max_depth]``. Blocks past a stage's depth are
skipped (the "skip" choice); their genes stay in the genome, inactive, so a later mutation of the depth can bring
them back (as in CARS's encoding), and :meth:`SearchSpace.canonical` zeroes them so two genomes that build the same
network compare equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import InvalidParameterError

__all__ = ["StageSpace", "SearchSpace", "BlockSpec", "Arch", "mnist_space"]

Arch = tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class StageSpace:
    """One stage: ``base_width`` output channels at width multiplier 1, the first block's ``stride``, 1..max_depth
    blocks."""

    base_width: int
    stride: int
    max_depth: int

    def __post_init__(self) -> None:
        if self.base_width < 4 or self.stride not in (1, 2) or self.max_depth < 1:
            raise InvalidParameterError(f"StageSpace needs base_width >= 4, stride 1 or 2, max_depth >= 1; got "
                                        f"{self.base_width}, {self.stride}, {self.max_depth}.")


@dataclass(frozen=True, kw_only=True)
class BlockSpec:
    """One active inverted-residual block of a decoded architecture."""

    cin: int
    cout: int
    kernel: int
    expand: int
    stride: int

    @property
    def hidden(self) -> int:
        return self.cin * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """Stem conv (3x3, ``stem_stride``), the stages, global average pooling and a linear classifier.

    >>> space = mnist_space()
    >>> arch = space.sample(np.random.default_rng(0))
    >>> len(arch) == space.n_genes
    True
    """

    in_channels: int = 3
    image_size: int = 28
    num_classes: int = 10
    stem_width: int = 16
    stem_stride: int = 2
    stages: tuple[StageSpace, ...] = field(default_factory=lambda: (
        StageSpace(base_width=16, stride=1, max_depth=2),
        StageSpace(base_width=32, stride=2, max_depth=3),
        StageSpace(base_width=64, stride=2, max_depth=3)))
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (1, 3, 6)
    width_mults: tuple[float, ...] = (0.5, 0.75, 1.0)

    def __post_init__(self) -> None:
        if not self.stages or any(k % 2 == 0 or k < 1 for k in self.kernels) or not self.expansions \
                or not self.width_mults or min(self.expansions) < 1:
            raise InvalidParameterError("SearchSpace needs stages, odd kernels, expansions >= 1 and width multipliers.")

    # ---- genome layout ------------------------------------------------------------------------------------------
    def _stage_offsets(self) -> list[int]:
        off, out = 0, []
        for st in self.stages:
            out.append(off)
            off += 2 + 2 * st.max_depth
        return out

    @property
    def n_genes(self) -> int:
        return sum(2 + 2 * st.max_depth for st in self.stages)

    def gene_choices(self) -> list[tuple[int, int]]:
        """Allowed (low, high) inclusive range of every gene."""
        out = []
        for st in self.stages:
            out += [(0, len(self.width_mults) - 1), (1, st.max_depth)]
            out += [(0, len(self.kernels) - 1), (0, len(self.expansions) - 1)] * st.max_depth
        return out

    def validate(self, arch: Arch) -> Arch:
        arch = tuple(int(g) for g in arch)
        ranges = self.gene_choices()
        if len(arch) != len(ranges) or any(not lo <= g <= hi for g, (lo, hi) in zip(arch, ranges)):
            raise InvalidParameterError(f"architecture {arch} does not fit this search space ({len(ranges)} genes, "
                                        f"ranges {ranges}). Use SearchSpace.sample or decode a results.json entry.")
        return arch

    def canonical(self, arch: Arch) -> Arch:
        """``arch`` with the genes of skipped blocks set to 0 (two genomes of one network compare equal)."""
        g = list(self.validate(arch))
        for st, off in zip(self.stages, self._stage_offsets()):
            for d in range(g[off + 1], st.max_depth):
                g[off + 2 + 2 * d] = g[off + 3 + 2 * d] = 0
        return tuple(g)

    def channels(self, stage: int, width_index: int) -> int:
        # multiples of 4 keep the channel counts friendly to the engines' SIMD blocking
        return max(4, int(round(self.stages[stage].base_width * self.width_mults[width_index] / 4.0)) * 4)

    def max_channels(self, stage: int) -> int:
        return max(self.channels(stage, i) for i in range(len(self.width_mults)))

    def blocks(self, arch: Arch) -> list[list[BlockSpec]]:
        """The active blocks of ``arch``, per stage."""
        g = self.validate(arch)
        cin, out = self.stem_width, []
        for s, (st, off) in enumerate(zip(self.stages, self._stage_offsets())):
            cout, depth, stage = self.channels(s, g[off]), g[off + 1], []
            for d in range(depth):
                stage.append(BlockSpec(cin=cin, cout=cout, kernel=self.kernels[g[off + 2 + 2 * d]],
                                       expand=self.expansions[g[off + 3 + 2 * d]], stride=st.stride if d == 0 else 1))
                cin = cout
            out.append(stage)
        return out

    def describe(self, arch: Arch) -> str:
        """Short text form: per stage ``c<channels>:k<kernel>e<expand>,...``."""
        parts = []
        for stage in self.blocks(arch):
            parts.append(f"c{stage[0].cout}:" + ",".join(f"k{b.kernel}e{b.expand}" for b in stage))
        return " | ".join(parts)

    # ---- variation ----------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random architecture."""
        return self.canonical(tuple(int(rng.integers(lo, hi + 1)) for lo, hi in self.gene_choices()))

    def mutate(self, arch: Arch, rng: np.random.Generator, rate: float = 0.15) -> Arch:
        """Resample each gene with probability ``rate``; at least one active gene changes."""
        ranges = self.gene_choices()
        base = self.canonical(arch)
        for _ in range(100):
            g = [int(rng.integers(lo, hi + 1)) if rng.random() < rate else v for v, (lo, hi) in zip(base, ranges)]
            child = self.canonical(tuple(g))
            if child != base:
                return child
        return self.sample(rng)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover of whole stages (a stage's genes only make sense together)."""
        pick = [bool(rng.random() < 0.5) for _ in self.stages]
        g, offs = [], self._stage_offsets() + [self.n_genes]
        for s in range(len(self.stages)):
            src = a if pick[s] else b
            g += list(src[offs[s]:offs[s + 1]])
        return self.canonical(tuple(g))

    def to_dict(self) -> dict:
        return {"in_channels": self.in_channels, "image_size": self.image_size, "num_classes": self.num_classes,
                "stem_width": self.stem_width, "stem_stride": self.stem_stride,
                "stages": [{"base_width": s.base_width, "stride": s.stride, "max_depth": s.max_depth}
                           for s in self.stages],
                "kernels": list(self.kernels), "expansions": list(self.expansions),
                "width_mults": list(self.width_mults)}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        return cls(**{**d, "stages": tuple(StageSpace(**s) for s in d["stages"]), "kernels": tuple(d["kernels"]),
                      "expansions": tuple(d["expansions"]), "width_mults": tuple(d["width_mults"])})


def mnist_space(**overrides) -> SearchSpace:
    """The space used for 28x28 digits: stem 16 (stride 2), stages 16/32/64 at 14x14, 7x7, 4x4."""
    return SearchSpace(**overrides)
