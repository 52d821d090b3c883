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

__all__ = ["OutputDir", "MARKER", "is_edgeslim_dir", "atomic_write_file", "check_output_file"]

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


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _marker_files(folder: Path) -> dict[str, list[int] | None] | None:
    """What edgeslim wrote into `folder` (name -> [size, mtime_ns], or None for markers of older versions)."""
    try:
        d = json.loads((folder / MARKER).read_text())
        if d.get("tool") != "edgeslim":
            return None
        files = d["files"]
        return dict(files) if isinstance(files, dict) else {str(f): None for f in files}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _changed_by_user(folder: Path) -> list[str]:
    """Files added to, or edited in, an edgeslim folder since edgeslim wrote it."""
    listed = _marker_files(folder) or {}
    out = []
    for name in _listing(folder):
        if name == MARKER:
            continue
        if name not in listed:
            out.append(name)
            continue
        stamp = listed[name]
        try:
            if stamp is not None and _stamp(folder / name) != list(stamp):
                out.append(name + " (edited)")
        except OSError:
            pass
    return sorted(out)


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
        self.inputs = [Path(p).expanduser() for p in inputs if p]
        self.tmp: Path | None = None
        self._lock_fd: int | None = None
        self.committed = False

    # -- checks --------------------------------------------------------------------------------------------------
    def check(self) -> None:
        t, opt = self.target, self.option
        # compare real paths: `..` and symlinks must not get past the checks
        real = Path(os.path.realpath(t))
        if real.parent == real:
            raise InvalidParameterError(f"{opt} {t}: refusing to write the filesystem root. Pass a new folder name.")
        cwd = Path(os.path.realpath(Path.cwd()))
        if _contains(real, cwd):
            raise InvalidParameterError(f"{opt} {t}: it holds the current directory; replacing it would delete your files. "
                                        "Pass a new folder name.")
        for p in self.inputs:
            rp = Path(os.path.realpath(p))
            if _contains(real, rp):
                raise InvalidParameterError(f"{opt} {t}: it holds the input {p}; replacing it would delete it. "
                                            "Pass a folder that holds none of the inputs.")
            if rp.is_dir() and _contains(rp, real):
                raise InvalidParameterError(f"{opt} {t}: it lies inside the data folder {p}; the output would become part "
                                            "of the data. Pass a folder outside it.")
        if t.is_symlink() or (t.exists() and not t.is_dir()):
            raise InvalidParameterError(f"{opt} {t}: a file of that name exists. Pass a folder name, or move the file away.")
        if t.is_dir():
            entries = [e for e in t.iterdir()]
            if entries:
                if _marker_files(t) is None:
                    raise InvalidParameterError(f"{opt} {t}: the folder exists, is not empty and was not written by edgeslim. "
                                                "Pass a new or empty folder.")
                extra = _changed_by_user(t)
                if extra and not self.force:
                    raise InvalidParameterError(f"{opt} {t}: the edgeslim folder holds files added or edited since edgeslim "
                                                f"wrote it ({', '.join(extra[:3])}). Move them away, or pass --force to replace the folder.")
        parent = t.parent
        if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidParameterError(f"{opt} {t}: cannot write in {parent} (permission denied). Pass a writable location.")

    def _clean_stale(self) -> None:
        """Remove temp folders of dead runs; put back an old output a dead run had moved aside (no renameat2)."""
        prefix, old_prefix = f".{self.target.name}.tmp-", f".{self.target.name}.old-"
        for p in self.target.parent.glob(old_prefix + "*"):
            try:
                pid = int(p.name[len(old_prefix):])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                if not self.target.exists():
                    os.rename(p, self.target)
                else:
                    shutil.rmtree(p, ignore_errors=True)
        for p in self.target.parent.glob(prefix + "*"):
            try:
                pid = int(p.name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)

    # -- transaction ---------------------------------------------------------------------------------------------
    def _lock(self) -> None:
        import fcntl

        lock = self.target.parent / f".{self.target.name}.lock"
        for _ in range(5):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InvalidParameterError(f"{self.option} {self.target}: another edgeslim run is writing this folder. "
                                            "Wait for it to finish, or pass another folder.") from None
            try:  # the holder before us may have unlinked the file we opened: lock the one on disk, or retry
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)
        raise InvalidParameterError(f"{self.option} {self.target}: could not take the lock {lock}. Try again.")

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(self.target.parent / f".{self.target.name}.lock")
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "OutputDir":
        self.check()
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as e:
            raise InvalidParameterError(f"{self.option} {self.target}: cannot write there ({e.strerror}). "
                                        "Pass a writable location.") from None
        try:
            self._clean_stale()
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-{os.getpid()}-", dir=self.target.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)  # a deliverable others can read, as mkdir would make it
        except BaseException:
            self._unlock()
            raise
        return self

    def commit(self) -> Path:
        """Mark the temp folder as edgeslim's and swap it in for the target. If the target changed while we worked
        (files added), the new output is kept beside it under a visible name instead of being thrown away."""
        assert self.tmp is not None, "commit() outside the with-block"
        files = {name: _stamp(self.tmp / name) for name in _listing(self.tmp)}
        (self.tmp / MARKER).write_text(json.dumps({"tool": "edgeslim", "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                   "files": files}, indent=1))
        try:
            self.check()  # the target may have changed while we worked
        except InvalidParameterError as e:
            keep = self.target.with_name(f"{self.target.name}.new-{time.strftime('%Y%m%d-%H%M%S')}")
            os.rename(self.tmp, keep)
            self.committed = True
            raise InvalidParameterError(f"{e} The new output was kept in {keep}.") from None
        t = self.target
        if not t.exists():
            os.rename(self.tmp, t)
        elif _exchange(self.tmp, t):
            shutil.rmtree(self.tmp, ignore_errors=True)  # now holds the old content
        else:
            old = t.with_name(f".{t.name}.old-{os.getpid()}")  # put back by the next run if we die here
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
        self._unlock()


def check_output_file(target: Path, *, force: bool = False, inputs: tuple = (), option: str = "-o") -> Path:
    """Refuse, before any work, an output file that is a folder, an input, or an existing file (without `force`)."""
    target = Path(target).expanduser().absolute()
    if target.is_dir():
        raise InvalidParameterError(f"{option} {target}: a folder of that name exists. Pass a file name.")
    real = os.path.realpath(target)
    for p in inputs:
        if p and os.path.realpath(Path(p).expanduser()) == real:
            raise InvalidParameterError(f"{option} {target}: that is an input; writing it would destroy it. Pass another name.")
    if target.exists() and not force:
        raise InvalidParameterError(f"{option} {target}: the file exists. Pass another name, or --force to replace it.")
    return target


def atomic_write_file(target: Path, write, *, force: bool = False, option: str = "-o", inputs: tuple = ()) -> Path:
    """Write one output file via a temp file beside it; an existing file is replaced only with `force`."""
    target = check_output_file(target, force=force, inputs=inputs, option=option)
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
