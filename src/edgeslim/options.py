"""Every option of the main job, declared once: type, default, range or choices, help, flag.

The one declaration drives the `edgeslim optimize` flags (`edgeslim.cli`), the keywords of `edgeslim.optimize`, the
validation of a `--config` file and of the resolved values (`StudyConfig.validate`), and the `config.yaml` an output
folder records. Adding an option is one entry here and the field of `StudyConfig` that receives it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidParameterError
from .policy import StrEnum, ThreadPolicy

__all__ = ["Option", "OPTIONS", "Objective", "check_key", "resolve_options", "DEFAULT_EVAL_LIMIT"]

DEFAULT_EVAL_LIMIT = 150  # eval lines on the bundled set unless --full: keeps the default run within 5 minutes on 2 cores


class Objective(StrEnum):
    LATENCY = "latency"
    SIZE = "size"


_KIND = {"str": "text", "float": "a number", "int": "a whole number", "bool": "true/false", "list": "a list"}


@dataclass(frozen=True)
class Option:
    """One option. `types`: what a config file or keyword may give (the first is the flag's type); `bounds`: an
    inclusive range for numbers (`lo`, `hi`; None: open); `choices`: an enum of allowed values; `flag`: the CLI flag
    (`--name` by default, `-o --outdir` style aliases in `aliases`); `argument`: a positional argument instead."""

    name: str
    types: tuple[type, ...]
    default: Any
    help: str
    bounds: tuple[float | None, float | None] | None = None
    choices: type[StrEnum] | None = None
    aliases: tuple[str, ...] = ()
    argument: bool = False
    is_path: bool = False  # the flag takes a file or folder path
    advice: str = ""  # appended to an out-of-range message (what a good value looks like)

    @property
    def help_text(self) -> str:
        """The help with the default appended (the one place a default is written)."""
        shown = {True: "on", False: None}.get(self.default, self.default) if isinstance(self.default, bool) else self.default
        return self.help + (f" Default: {shown}." if shown is not None else "")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check_type(self, value: Any, where: str) -> Any:
        """`value` as the option holds it (Path -> str, tuple -> list); a wrong type names `where` and the option."""
        if value is None:
            return None
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            want = " or ".join(_KIND[t.__name__] for t in self.types)
            raise InvalidParameterError(f"{where} {self.name.replace('_', '-')}={value!r} is not valid: give {want}.")
        return value

    def check(self, value: Any) -> Any:
        """A resolved value checked against its range or choices (None passes: the default applies); returns it, as
        the enum member for options with choices."""
        if value is None:
            return None
        if self.choices is not None:
            return self.choices.parse(value, self.flag, self.advice)
        if self.bounds is not None:
            lo, hi = self.bounds
            whole = int in self.types and float not in self.types
            ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and (not whole or isinstance(value, int))
                  and math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value <= hi))
            if not ok:
                if whole:
                    what = f"give a whole number from {lo} to {hi}"
                else:
                    what = f"give a finite number >= {lo}" + (f", e.g. {self.advice}" if self.advice else "")
                raise InvalidParameterError(f"{self.flag} {value!r} is not valid: {what}.")
        return value


def _o(*args, **kw) -> Option:
    return Option(*args, **kw)


OPTIONS: dict[str, Option] = {o.name: o for o in (
    _o("model", (str,), None, "ONNX model path or zoo name (default: the PP-OCRv4 recognizer).", argument=True),
    _o("data", (str,), None, is_path=True,
       help="Data folder (ocr-rec: images + labels.tsv; classify: a folder per class; raw: .npz)."),
    _o("task", (str,), "ocr-rec", "ocr-rec | classify | raw | detect | embed | ocr-det | ocr-cls"),
    _o("max_drop", (float, int), None, "Accuracy budget: the most the metric may worsen (task default: CER 0.005, top-1 0.01).",
       bounds=(0, None), advice="0.005"),
    _o("objective", (str,), Objective.LATENCY.value, "latency | size", choices=Objective),
    _o("recipes", (str, list), None, "Comma-separated recipe specs, e.g. fp32,int8:calibrator=mse,mixed."),
    _o("threads", (int,), 2, "Intra-op threads for evaluation and benchmarking.", bounds=(1, 1024)),
    _o("engines", (str, list), None, "Engines to explore beside ort, e.g. mnn,ncnn (default: every installed one but litert, which is "
       "asked for by name; 'ort' for none)."),
    _o("engine_precisions", (str, list), None, "Exact engine:precision list, e.g. mnn:int8,ncnn:bf16."),
    _o("rounds", (int,), 5, "Alternating benchmark rounds.", bounds=(1, 1000)),
    _o("confirm_top", (int,), 3, "Fastest candidates re-measured head to head before selecting, with any the screen cannot "
       "tell from the last of them (0: no confirmation).", bounds=(0, 100)),
    _o("cpu", (str,), ThreadPolicy.DEDICATED.value, "Thread-pool policy that selects: dedicated (idle CPU, spinning pools) | "
       "shared (busy CPU, passive).", choices=ThreadPolicy,
       advice="Use dedicated (an otherwise idle CPU) or shared (a busy CPU)"),
    _o("device", (str,), "local", "Where candidates are evaluated and timed: local | ssh://HOST (a ~/.ssh/config alias or "
       "USER@HOST:PORT; needs Python there, edgeslim installs the engines' wheels in a venv once)."),
    _o("verify_on", (str, list), None, "Re-evaluate the selected candidate on these devices before it ships, e.g. "
       "qemu-aarch64:cortex-a76,qemu-aarch64:cortex-a53 (run `edgeslim device setup qemu-aarch64` once); a candidate "
       "that breaks the budget or diverges there is rejected and the next one verified."),
    _o("verify_all", (bool,), False, "With --verify-on: verify every candidate that passed, not only the selection."),
    _o("verify_limit", (int,), 20, "Evaluation samples a verification device runs (emulation is ~200x slower than "
       "native).", bounds=(1, 10**6)),
    _o("outdir", (str,), "edgeslim-out", "Output folder; replaced atomically at the end, only if "
       "edgeslim wrote it.", aliases=("-o",), is_path=True),
    _o("force", (bool,), False, "Replace an edgeslim output folder even if files were added to it."),
    _o("candidates", (bool,), True, "Keep every candidate's files under candidates/ in the output folder (off: the folder "
       "holds only what to ship, as deploy.json lists it, and the reports)."),
    _o("calib_limit", (int,), None, "Use at most this many calibration samples.", bounds=(1, 10**9)),
    _o("eval_limit", (int,), None, "Use at most this many evaluation samples.", bounds=(1, 10**9)),
    _o("full", (bool,), False, "Evaluate on every evaluation line (default: a subset, to finish within minutes)."),
    _o("cache", (bool,), True, "Reuse built and evaluated candidates from ~/.cache/edgeslim."),
)}


def check_key(key: str, where: str) -> None:
    if key not in OPTIONS:
        close = difflib.get_close_matches(key, list(OPTIONS), n=2, cutoff=0.5)
        raise InvalidParameterError(f"{where}: unknown option {key!r}." + (f" Did you mean {', '.join(close)}?" if close else
                                    f" Known: {', '.join(OPTIONS)}."))


def resolve_options(given: dict[str, Any], config: dict[str, Any] | None = None, where: str = "option") -> dict[str, Any]:
    """Defaults < config file < given (None in `given` means not given). Types are checked here; ranges and choices
    when the study's config is validated."""
    opts = {k: o.default for k, o in OPTIONS.items()}
    for src, name in ((config or {}, "config"), ({k: v for k, v in given.items() if v is not None}, where)):
        for k, v in src.items():
            check_key(k, name)
            opts[k] = OPTIONS[k].check_type(v, name)
    return opts
