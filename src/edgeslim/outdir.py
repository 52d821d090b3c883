"""Writing an output folder without ever losing a user's files.

Rules, checked before any work starts (`OutputDir.check`):
- a missing target is created; an existing *file* is refused;
- an existing folder is replaced only when edgeslim wrote it (its `.edgeslim` marker lists every file it wrote)
  and nothing else was added since, or with `force=True` when it carries the marker; a non-empty folder without
  the marker is refused, whatever `force` says;
- a target that holds the current directory, an input (model, data) or is the filesystem root is refused;
- one run per target at a time (an exclusive `flock` on `.<name>.lock` beside it);
- temp folders of dead runs (`.<name>.tmp-<pid>-*` whose process is gone) are removed.

The new content is written into a temp folder beside the target and swapped in at the end: on Linux with
`renameat2(RENAME_EXCHANGE)` (one atomic step; the old content then lies in the temp folder and is removed),
elsewhere by moving the old folder aside and moving it back if the second rename fails.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import InvalidParameterError

__all__ = ["OutputDir", "MARKER", "is_edgeslim_dir", "atomic_write_file"]

MARKER = ".edgeslim"
_RENAME_EXCHANGE = 2


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def is_edgeslim_dir(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def _marker_files(folder: Path) -> list[str] | None:
    try:
        d = json.loads((folder / MARKER).read_text())
        return sorted(d["files"]) if d.get("tool") == "edgeslim" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the OS or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _contains(parent: Path, child: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


class OutputDir:
    """A transaction on an output folder: `check()` before work, write into `.tmp`, `commit()` at the end.

    >>> with OutputDir(Path("out")) as od:      # doctest: +SKIP
    ...     (od.tmp / "results.json").write_text("{}")
    ...     od.commit()
    """

    def __init__(self, target: str | os.PathLike, *, force: bool = False, inputs: tuple = (), option: str = "-o") -> None:
        self.target = Path(target).expanduser().absolute()
        self.force, self.option = force, option
        self.inputs = [Path(p).expanduser().absolute() for p in inputs if p]
        self.tmp: Path | None = None
        self._lock_fd: int | None = None
        self.committed = False

    # -- checks --------------------------------------------------------------------------------------------------
    def check(self) -> None:
        t, opt = self.target, self.option
        if t.parent == t:
            raise InvalidParameterError(f"{opt} {t}: refusing to write the filesystem root. Pass a new folder name.")
        cwd = Path.cwd().absolute()
        if _contains(t, cwd):
            raise InvalidParameterError(f"{opt} {t}: it holds the current directory; replacing it would delete your files. "
                                        "Pass a new folder name.")
        for p in self.inputs:
            if _contains(t, p):
                raise InvalidParameterError(f"{opt} {t}: it holds the input {p}; replacing it would delete it. "
                                            "Pass a folder that holds none of the inputs.")
        if t.is_symlink() or (t.exists() and not t.is_dir()):
            raise InvalidParameterError(f"{opt} {t}: a file of that name exists. Pass a folder name, or move the file away.")
        if t.is_dir():
            entries = [e for e in t.iterdir()]
            if entries:
                listed = _marker_files(t)
                if listed is None:
                    raise InvalidParameterError(f"{opt} {t}: the folder exists, is not empty and was not written by edgeslim. "
                                                "Pass a new or empty folder.")
                extra = sorted(set(_listing(t)) - set(listed) - {MARKER})
                if extra and not self.force:
                    raise InvalidParameterError(f"{opt} {t}: the edgeslim folder holds files edgeslim did not write "
                                                f"({', '.join(extra[:3])}). Move them away, or pass --force to replace the folder.")
        parent = t.parent
        if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidParameterError(f"{opt} {t}: cannot write in {parent} (permission denied). Pass a writable location.")

    def _clean_stale(self) -> None:
        prefix = f".{self.target.name}.tmp-"
        for p in self.target.parent.glob(prefix + "*"):
            try:
                pid = int(p.name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)

    # -- transaction ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "OutputDir":
        import fcntl

        self.check()
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            lock = self.target.parent / f".{self.target.name}.lock"
            self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InvalidParameterError(f"{self.option} {self.target}: cannot write there ({e.strerror}). "
                                        "Pass a writable location.") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise InvalidParameterError(f"{self.option} {self.target}: another edgeslim run is writing this folder. "
                                        "Wait for it to finish, or pass another folder.") from None
        self._clean_stale()
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-{os.getpid()}-", dir=self.target.parent))
        return self

    def commit(self) -> Path:
        """Mark the temp folder as edgeslim's and swap it in for the target."""
        assert self.tmp is not None, "commit() outside the with-block"
        files = _listing(self.tmp)
        (self.tmp / MARKER).write_text(json.dumps({"tool": "edgeslim", "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                   "files": files}, indent=1))
        self.check()  # the target may have changed while we worked
        t = self.target
        if not t.exists():
            os.rename(self.tmp, t)
        elif _exchange(self.tmp, t):
            shutil.rmtree(self.tmp, ignore_errors=True)  # now holds the old content
        else:
            old = t.with_name(f".{t.name}.tmp-{os.getpid()}-old")
            os.rename(t, old)
            try:
                os.rename(self.tmp, t)
            except BaseException:
                os.rename(old, t)  # roll back: the previous output stays where it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return t

    def __exit__(self, *exc) -> None:
        if self.tmp is not None and not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            try:
                os.unlink(self.target.parent / f".{self.target.name}.lock")
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None


def atomic_write_file(target: Path, write, *, force: bool = False, option: str = "-o") -> Path:
    """Write one output file via a temp file beside it; an existing file is replaced only with `force`."""
    target = Path(target).expanduser().absolute()
    if target.is_dir():
        raise InvalidParameterError(f"{option} {target}: a folder of that name exists. Pass a file name.")
    if target.exists() and not force:
        raise InvalidParameterError(f"{option} {target}: the file exists. Pass another name, or --force to replace it.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidParameterError(f"{option} {target}: cannot create {target.parent} ({e.strerror}). Pass a writable location.") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{option} {target}: cannot write in {target.parent} (permission denied). Pass a writable location.")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
