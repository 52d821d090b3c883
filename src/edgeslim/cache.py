"""Content-addressed cache of built and evaluated candidates, and of benchmark runs.

A key is the sha256 of everything the result depends on: the model file's hash, the data's hash, the task and its
limits, the candidate (recipe spec or engine:precision), the budget, the threads, and the versions of edgeslim,
onnx, onnxruntime, MNN, ncnn and numpy. Changing any of them misses the cache. Entries live under
`$EDGESLIM_CACHE/runs` (default `~/.cache/edgeslim/runs`); each is written to a temp folder and renamed into place,
so an interrupted run leaves no half entry, and a re-run after an interruption redoes only the candidates it had not
finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Cache", "cache_dir", "file_sha256", "tree_sha256", "versions", "key_of"]


def cache_dir() -> Path:
    """Where edgeslim keeps what it fetched and measured: $EDGESLIM_CACHE, else ~/.cache/edgeslim."""
    return Path(os.environ.get("EDGESLIM_CACHE", Path.home() / ".cache" / "edgeslim"))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def tree_sha256(path: str | os.PathLike) -> str:
    """Hash of a file, or of a folder's files (relative names and contents, sorted)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


_SRC_HASH: str | None = None


def source_hash() -> str:
    """sha256 of edgeslim's own source files: the package version does not change between commits that change
    what a recipe or converter writes, so the cache keys on the code itself."""
    global _SRC_HASH
    if _SRC_HASH is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
        _SRC_HASH = h.hexdigest()[:16]
    return _SRC_HASH


def versions() -> dict[str, str]:
    """Versions of everything whose behaviour a result depends on ('-' where not installed), and the source hash."""
    from importlib import metadata

    out = {"edgeslim_source": source_hash()}
    for dist in ("edgeslim", "onnx", "onnxruntime", "MNN", "ncnn", "pnnx", "numpy", "opencv-python-headless"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Cache:
    """`get(kind, key)` -> (entry dict, folder of stored files) or None; `put(kind, key, entry, files, blob)`."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "runs"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get(self, kind: str, key: str) -> tuple[dict, Path] | None:
        if not self.enabled:
            return None
        d = self._dir(kind, key)
        try:
            entry = json.loads((d / "entry.json").read_text())
            if not isinstance(entry, dict):
                raise ValueError
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return entry, d

    def drop(self, kind: str, key: str) -> None:
        """Forget an entry that turned out unreadable (the caller then counts it as a miss)."""
        shutil.rmtree(self._dir(kind, key), ignore_errors=True)
        self.hits -= 1
        self.misses += 1

    def blob(self, folder: Path) -> Any:
        p = folder / "blob.pkl"
        if not p.exists():
            return None
        with p.open("rb") as f:
            return pickle.load(f)

    def put(self, kind: str, key: str, entry: dict, files: list[Path] = (), blob: Any = None) -> None:
        if not self.enabled:
            return
        d = self._dir(kind, key)
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-{os.getpid()}-", dir=d.parent))
            try:
                for f in files:
                    shutil.copy2(f, tmp / Path(f).name)
                if blob is not None:
                    with (tmp / "blob.pkl").open("wb") as fh:
                        pickle.dump(blob, fh, protocol=pickle.HIGHEST_PROTOCOL)
                (tmp / "entry.json").write_text(json.dumps(entry, default=str))
                if not d.exists():  # the first writer wins: an entry being read is never removed under a reader
                    os.rename(tmp, d)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # a cache that cannot be written is a slower run, not a failed one
