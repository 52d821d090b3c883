"""Chip profiles and roofline estimates: how fast would a candidate run on a named device?

A profile is what a chip can do: peak operations per second per precision (fp32, fp16, bf16, int8), memory
bandwidth, and where each figure comes from. One YAML file per device lives in `edgeslim/data/profiles/`; a value
no source gives is null, never guessed, and an estimate that needs it says "n/a". The `host` profile is measured on
the machine at hand with onnxruntime (`edgeslim.profiles.host`) and cached per CPU.

`estimate(model, precision, profile)` is the roofline time of the model's graph on that profile (the model is in
`edgeslim.profiles.roofline`). It is an estimate, never a measurement: the report labels it so.

>>> from edgeslim.profiles import estimate, list_profiles
>>> list_profiles()  # doctest: +SKIP
['allwinner-r329', 'apple-a14-ane', 'apple-a14-cpu', 'hisilicon-kirin-990-5g', 'host', ...]
>>> estimate("model.onnx", "int8", "hisilicon-kirin-990-5g", shapes={"x": (1, 3, 48, 320)}).ms  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import onnx

from ..errors import EdgeslimError, UnknownNameError
from .roofline import FLOAT_BYTES, PRECISIONS, NodeCost, RooflineResult, graph_costs, roofline

__all__ = ["Profile", "ProfileError", "list_profiles", "load_profile", "load_profiles", "estimate", "validate_profile",
           "candidate_precision", "graph_costs", "roofline", "RooflineResult", "NodeCost", "PRECISIONS", "KINDS_OF_CHIP"]

KINDS_OF_CHIP = ("cpu", "gpu", "npu", "soc")
_KEYS = {"name", "title", "kind", "cores", "clock_ghz", "peak_ops_per_s", "memory_bandwidth_bytes_per_s", "sources",
         "derived", "notes"}
_REQUIRED = _KEYS - {"derived", "notes"}
_SOURCED = ("cores", "clock_ghz", "memory_bandwidth_bytes_per_s") + tuple(f"peak_ops_per_s.{p}" for p in PRECISIONS)


class ProfileError(EdgeslimError, ValueError):
    """A profile file that does not follow the schema, or an unknown profile name."""


@dataclass(frozen=True, kw_only=True)
class Profile:
    """What a chip can do. Operations per second count a multiply-add as 2 ops; bandwidth is bytes per second.

    The fields after `notes` are known for the measured `host` profile only: ceilings per kernel class, the
    bandwidth at a size that fits in cache, the per-node and per-run launch costs, and precisions the runtime
    executes as another (onnxruntime widens fp16 to fp32 on CPUs without fp16 kernels).
    """

    name: str
    title: str
    kind: str
    cores: str | None
    clock_ghz: float | None
    peak_ops_per_s: dict[str, float | None]
    memory_bandwidth_bytes_per_s: float | None
    sources: tuple[dict, ...] = ()
    derived: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    measured: bool = False
    kernel_ceilings: dict[str, list[list[float]]] = field(default_factory=dict)  # "conv:qdq:int8" -> [[MACs, ops/s]]
    cache_bandwidth_bytes_per_s: float | None = None
    cache_bytes: int | None = None
    node_overhead_s: float | None = None
    run_overhead_s: float | None = None
    runs_as: dict[str, str] = field(default_factory=dict)
    runs_as_why: dict[str, str] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)

    def peak(self, precision: str) -> float | None:
        return self.peak_ops_per_s.get(precision)

    @property
    def bandwidth(self) -> float | None:
        return self.memory_bandwidth_bytes_per_s

    def bandwidth_for(self, nbytes: float) -> float:
        """The bandwidth a pass over `nbytes` sees: the cache's where it is known and the bytes fit, else memory's."""
        if self.cache_bandwidth_bytes_per_s and self.cache_bytes and nbytes <= self.cache_bytes:
            return self.cache_bandwidth_bytes_per_s
        return float(self.memory_bandwidth_bytes_per_s or 0.0) or math.inf

    def kernel_ceiling(self, kind: str, mode: str, precision: str, macs: float) -> float | None:
        """The measured ceiling of a kernel class at a node's size: linear in log(MACs) between the measured sizes,
        the nearest one outside them; None where the class was not measured."""
        pts = sorted(self.kernel_ceilings.get(f"{kind}:{mode}:{precision}") or [])
        if not pts:
            return None
        if macs <= pts[0][0] or len(pts) == 1:
            return pts[0][1]
        if macs >= pts[-1][0]:
            return pts[-1][1]
        for (m0, c0), (m1, c1) in zip(pts, pts[1:]):
            if m0 <= macs <= m1:
                f = (math.log(macs) - math.log(m0)) / (math.log(m1) - math.log(m0))
                return c0 + f * (c1 - c0)
        return pts[-1][1]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "title", "kind", "cores", "clock_ghz", "peak_ops_per_s",
                                           "memory_bandwidth_bytes_per_s", "derived", "notes", "measured")}
        d["sources"] = list(self.sources)
        if self.measured:
            d.update({k: getattr(self, k) for k in ("kernel_ceilings", "cache_bandwidth_bytes_per_s", "cache_bytes",
                                                    "node_overhead_s", "run_overhead_s", "runs_as", "runs_as_why",
                                                    "measurement")})
        return d

    def summary(self) -> dict:
        """The figures a report shows beside its estimates."""
        return {"name": self.name, "title": self.title, "kind": self.kind, "measured": self.measured,
                "peak_gops": {p: (None if v is None else round(v / 1e9, 2)) for p, v in self.peak_ops_per_s.items()},
                "bandwidth_gbs": None if self.bandwidth is None else round(self.bandwidth / 1e9, 2),
                "sources": [s.get("url") for s in self.sources]}


def _data_dir() -> Path:
    return Path(str(resources.files("edgeslim") / "data" / "profiles"))


def _yaml_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_data_dir().glob("*.yaml"))}


def list_profiles(include_host: bool = True) -> list[str]:
    """Names of the device profiles (one YAML file each) and `host`."""
    names = sorted(_yaml_files())
    return names + ["host"] if include_host else names


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def validate_profile(data: Any, where: str = "profile") -> Profile:
    """Check a profile's fields (as read from YAML) and return it; any problem is one `ProfileError` naming the file
    and the field. Every non-null figure must be named in the `values` of at least one source."""
    def bad(msg: str) -> ProfileError:
        return ProfileError(f"{where}: {msg}")

    if not isinstance(data, dict):
        raise bad("is not a mapping of fields. Write it as YAML `key: value` lines (see the bundled profiles).")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}. Known fields: {', '.join(sorted(_KEYS))}.")
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}. Give them (null where no source gives a value).")
    for k in ("name", "title"):
        if not isinstance(data[k], str) or not data[k].strip():
            raise bad(f"{k} must be a non-empty string.")
    if data["kind"] not in KINDS_OF_CHIP:
        raise bad(f"kind {data['kind']!r} is not one of {', '.join(KINDS_OF_CHIP)}.")
    if data["cores"] is not None and not isinstance(data["cores"], str):
        raise bad("cores must be a string such as '4x Cortex-A76 @ 2.86/2.36 GHz' or null.")
    for k in ("clock_ghz", "memory_bandwidth_bytes_per_s"):
        if data[k] is not None and not _finite_positive(data[k]):
            raise bad(f"{k} must be a positive number or null, got {data[k]!r}.")
    peaks = data["peak_ops_per_s"]
    if not isinstance(peaks, dict) or set(peaks) != set(PRECISIONS):
        raise bad(f"peak_ops_per_s must give exactly {', '.join(PRECISIONS)} (null where unpublished).")
    for p, v in peaks.items():
        if v is not None and not _finite_positive(v):
            raise bad(f"peak_ops_per_s.{p} must be a positive number (ops/s) or null, got {v!r}.")
    sources = data["sources"]
    if not isinstance(sources, list) or not sources:
        raise bad("sources must be a non-empty list of {url, gives, values}.")
    covered: set[str] = set()
    for i, s in enumerate(sources):
        if not isinstance(s, dict) or set(s) - {"url", "gives", "values"} or not isinstance(s.get("url"), str) \
                or not isinstance(s.get("gives"), str) or not isinstance(s.get("values", []), list):
            raise bad(f"sources[{i}] must be {{url: str, gives: str, values: [field, ...]}}.")
        for v in s.get("values", []):
            if v not in _SOURCED:
                raise bad(f"sources[{i}].values names {v!r}, not one of {', '.join(_SOURCED)}.")
        covered.update(s.get("values", []))
    derived = data.get("derived") or {}
    if not isinstance(derived, dict) or any(k not in _SOURCED or not isinstance(v, str) for k, v in derived.items()):
        raise bad(f"derived must map a field ({', '.join(_SOURCED)}) to a note saying how it was derived.")

    def value(path: str):
        if path.startswith("peak_ops_per_s."):
            return peaks[path.split(".", 1)[1]]
        return data[path]

    for path in _SOURCED:
        if value(path) is not None and path not in covered:
            raise bad(f"{path} = {value(path)!r} has no source. Name it in a source's `values`, or set it to null.")
    for path in derived:
        if value(path) is None:
            raise bad(f"derived explains {path}, which is null. Remove the note or give the value.")
    return Profile(name=data["name"], title=data["title"], kind=data["kind"], cores=data["cores"],
                   clock_ghz=None if data["clock_ghz"] is None else float(data["clock_ghz"]),
                   peak_ops_per_s={p: None if peaks[p] is None else float(peaks[p]) for p in PRECISIONS},
                   memory_bandwidth_bytes_per_s=None if data["memory_bandwidth_bytes_per_s"] is None
                   else float(data["memory_bandwidth_bytes_per_s"]),
                   sources=tuple(dict(s) for s in sources), derived=dict(derived), notes=str(data.get("notes") or ""))


def _read_yaml(path: Path) -> Profile:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML ({str(e).splitlines()[0]}). Fix the file.") from None
    prof = validate_profile(data, str(path))
    if prof.name != path.stem:
        raise ProfileError(f"{path}: name {prof.name!r} differs from the file name. Name the file {prof.name}.yaml.")
    return prof


def load_profile(name: str | os.PathLike, threads: int = 2, cache: bool = True) -> Profile:
    """A profile by name (`host` measures this machine, cached per CPU) or from a YAML file path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return _read_yaml(p)
    name = str(name)
    if name == "host":
        from .host import host_profile

        return host_profile(threads=threads, cache=cache)
    files = _yaml_files()
    if name not in files:
        known = list(files) + ["host"]
        close = [k for k in known if name.lower() in k] or difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown profile {name!r}. Known: {', '.join(known)}.{hint}")
    return _read_yaml(files[name])


def load_profiles(include_host: bool = True, threads: int = 2, cache: bool = True) -> list[Profile]:
    """Every device profile, and the measured host (first: it is the one the report can check against)."""
    out = [load_profile(n) for n in list_profiles(include_host=False)]
    if include_host:
        out.insert(0, load_profile("host", threads=threads, cache=cache))
    return out


def candidate_precision(recipe: str, engine: str) -> tuple[str, str]:
    """The precision a candidate computes in, and a note where that differs from its name.

    onnxruntime's `bf16` recipe stores weights in bf16 and widens them when the session loads, so it computes in
    fp32; weight-only recipes (`w8`, `w4`) compute in fp32 with weights dequantized at run time (the graph shows it).
    """
    name = recipe.split(":", 1)[0]
    if name.startswith("int8") or name == "mixed":
        return "int8", ""
    if name in ("fp16", "low"):
        return "fp16", ""
    if name.startswith("bf16"):
        if engine == "ort":
            return "fp32", "bf16 weight storage, widened to fp32 when the session loads"
        return "bf16", ""
    if name in ("w8", "w4"):
        return "fp32", f"{name} weights dequantized to fp32 at run time"
    return "fp32", ""


def _as_model(model_or_path: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    from ..model import load_onnx

    return load_onnx(model_or_path)


def estimate(model_or_path: onnx.ModelProto | str | os.PathLike | None, precision: str, profile: Profile | str, *,
             shapes: dict[str, tuple] | tuple | None = None, costs: list[NodeCost] | None = None,
             threads: int = 2) -> RooflineResult:
    """Roofline time of an ONNX model at `precision` (fp32 | fp16 | bf16 | int8) on `profile` (a `Profile` or a name).

    `shapes`: input shapes (name -> shape, or one shape for the first input); dynamic dims not given are 1.
    Pass `costs` (from `graph_costs`) to estimate one graph on many profiles without counting it again.

    >>> r = estimate("model.onnx", "fp32", "host", shapes=(1, 3, 48, 320))  # doctest: +SKIP
    >>> r.ms, r.bound  # doctest: +SKIP
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile, threads=threads)
    if costs is None:
        model = _as_model(model_or_path)
        if isinstance(shapes, tuple):
            from ..model import input_specs

            ins = input_specs(model)
            shapes = {ins[0].name: shapes} if ins else {}
        costs = graph_costs(model, shapes)
    return roofline(costs, precision, prof)


def bytes_per_element(precision: str) -> float:
    """Float tensor element size at a precision (int8: 1)."""
    return 1.0 if precision == "int8" else float(FLOAT_BYTES[precision])
