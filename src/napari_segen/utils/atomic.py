"""Safe file writes: atomic, never silently replacing, never racing, never leaving their folder.

* :func:`atomic_path` / :func:`atomic_paths` / :func:`atomic_write`: a file is
  either the old one or the complete new one, never half. Without
  ``overwrite`` the last step is *create-exclusive* (a hard link from the
  temporary file, which fails when the name exists), so of two writers racing
  for one name exactly one succeeds and the other gets :class:`OverwriteError`.
* Temporary files (``.<name>.<host>-<pid>-XXXXXXXX.tmp<suffix>``) of writers that
  died are removed by the next write into their folder.
* :func:`safe_name` / :func:`confined_path`: output names that cannot leave
  their output folder.
* :func:`plan_outputs`: every output name of a batch checked against the others,
  the inputs and the files already there, before the first write.
* :func:`ensure_writable_dir`: a destination folder checked writable before
  long work starts.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path


class OverwriteError(FileExistsError):
    """Raised instead of silently replacing a user's file."""


class UnsafeNameError(ValueError):
    """An output name that would leave its output folder (``..``, ``/``, an absolute path)."""


class OutputCollisionError(ValueError):
    """Two outputs of one batch, or an output and an input, would share a file."""


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` as a Path; raise :class:`OverwriteError` if it exists, unless overwriting.

    An early, friendly check only: the write itself is create-exclusive
    (:func:`atomic_path`), so a file that appears in between is not replaced either.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise _exists(path)
    return path


def _exists(path: Path) -> OverwriteError:
    return OverwriteError(
        f"{path} already exists; choose another name or allow overwriting (--overwrite)"
    )


# --- names -----------------------------------------------------------------------------------
def safe_name(name: str, what: str = "file name") -> str:
    """``name`` if it is a plain file name that stays in its folder, else :class:`UnsafeNameError`.

    Refused: empty names, ``.``/``..``, folder separators (``/`` and ``\\`` on every
    system), drive letters, NUL, and names starting with ``.`` (hidden files the
    image readers skip).
    """
    bad = (
        not isinstance(name, str)
        or not name.strip()
        or name.startswith(".")
        or any(c in name for c in ("/", "\\", "\0", ":"))
        or os.path.isabs(name)
    )
    if bad:
        raise UnsafeNameError(
            f"{what} {name!r} must be a plain name: no folders ('/', '\\', '..'), no drive, "
            "not starting with '.'; outputs are written into the output folder only"
        )
    return name


def confined_path(folder: str | os.PathLike, name: str, what: str = "file name") -> Path:
    """``folder / name`` for a :func:`safe_name`; it cannot resolve outside ``folder``."""
    return Path(folder) / safe_name(name, what)


# --- planning a batch ------------------------------------------------------------------------
def _key(path: Path) -> str:
    """One key per file on any file system (case-insensitive ones included)."""
    return os.path.normcase(os.path.abspath(path)).casefold()


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def plan_outputs(
    outputs: Iterable[tuple[str | os.PathLike, str]] | Iterable[str | os.PathLike],
    *,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Check all output paths of a batch before the first write; return them as Paths.

    ``outputs`` are paths, or ``(path, what it is)`` pairs such as
    ``(out/"a_probs.tif", "the probabilities of a.png")`` for clearer messages.

    Raises:
        OutputCollisionError: two outputs share a file (also when the names differ only
            in case, which is one file on macOS and Windows), or an output would
            replace an input (even with ``overwrite``).
        OverwriteError: an output exists and ``overwrite`` is False.
    """
    planned: list[tuple[Path, str]] = []
    for item in outputs:
        path, what = item if isinstance(item, tuple) else (item, "")
        planned.append((Path(path), what))
    seen: dict[str, tuple[Path, str]] = {}
    for path, what in planned:
        k = _key(path)
        if k in seen:
            other, other_what = seen[k]
            raise OutputCollisionError(
                f"two outputs would be written to {path}"
                + (f" ({other_what} and {what})" if what and other_what else "")
                + "; rename the inputs or write them into separate output folders"
            )
        seen[k] = (path, what)
    by_key = {_key(Path(p)): Path(p) for p in inputs}
    by_inode = {n: Path(p) for p in inputs if (n := _inode(Path(p))) is not None}
    for path, what in planned:
        src = by_key.get(_key(path)) or by_inode.get(_inode(path) or (-1, -1))
        if src is not None:
            raise OutputCollisionError(
                f"{path}{f' ({what})' if what else ''} would replace the input {src}; "
                "write the outputs into another folder"
            )
    if not overwrite:
        existing = [p for p, _ in planned if p.exists()]
        if existing:
            raise OverwriteError(
                f"{existing[0]} already exists ({len(existing)} of the {len(planned)} outputs "
                "are there); choose another output folder or allow overwriting (--overwrite)"
            )
    return [p for p, _ in planned]


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be made in it; raise OSError if not.

    Checked before long work, so an unwritable destination is found in a second,
    not after an hour of training.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        with tempfile.TemporaryFile(dir=folder, prefix=".napari-segen-write-test."):
            pass
    except OSError as err:
        if err.filename == str(folder):
            raise
        raise type(err)(err.errno, err.strerror or str(err), str(folder)) from err
    return folder


# --- stale temporary files -------------------------------------------------------------------
_HOST = hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:6]
_TMP = re.compile(r"^\..+\.(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp")
_OLD_FOREIGN_S = 24 * 3600  # another machine's (or an older version's) temp file: a day
_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it there; age decides instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _is_stale(entry: os.DirEntry) -> bool:
    m = _TMP.match(entry.name)
    if m is None or not entry.is_file(follow_symlinks=False):
        return False
    if m["host"] == _HOST and not _pid_alive(int(m["pid"])):
        return True
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > _OLD_FOREIGN_S
    except OSError:
        return False


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files left in ``folder`` by writers that died; return what was removed.

    A temp file of a live process (this machine) is kept; one of another machine
    or an older version goes after a day.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and ".tmp" in entry.name and _is_stale(entry):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _clean_once(folder: Path) -> None:
    key = _key(folder)
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    clean_stale_temps(folder)


# --- writing ---------------------------------------------------------------------------------
# Where hard links are not possible, an exclusive create claims the name instead.
_NO_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@contextlib.contextmanager
def _temp_for(path: Path) -> Iterator[Path]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_once(path.parent)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name[:120]}.{_HOST}-{os.getpid()}-",
            suffix=".tmp" + path.suffix[:20],
            dir=path.parent,
        )
    except OSError as err:
        raise _at(err, path) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``path``: replacing it, or only if ``path`` is free."""
    # mkstemp makes 0600 files; give the result the permissions a plain open() would
    os.chmod(tmp, _default_mode(path))
    with open(tmp, "rb") as f:  # on disk before it gets its name
        os.fsync(f.fileno())
    try:
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as err:
            if err.errno not in _NO_LINK:
                raise
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                raise _exists(path) from None
            os.replace(tmp, path)
            return
        tmp.unlink()
    except OverwriteError:
        raise
    except OSError as err:
        raise _at(err, path) from err


def _at(err: OSError, path: Path) -> OSError:
    """``err`` about ``path`` (not the temporary file the OS named)."""
    if err.errno is None:
        return err
    return type(err)(err.errno, err.strerror, str(path))


@contextlib.contextmanager
def atomic_paths(
    paths: Sequence[str | os.PathLike], overwrite: bool = False
) -> Iterator[list[Path]]:
    """Temporary paths next to ``paths``; on success each becomes its path, all or none.

    Without ``overwrite`` no existing file is replaced (create-exclusive); when a
    later one of ``paths`` turns out taken, the ones already made are removed
    again. On error the temporary files are removed and ``paths`` are left as
    they were.
    """
    targets = [check_writable(p, overwrite) for p in paths]
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(_temp_for(p)) for p in targets]
        try:
            yield tmps
        except OSError as err:  # a failed write (disk full...) names the file the user asked for
            names = {str(t): p for t, p in zip(tmps, targets, strict=True)}
            target = names.get(str(err.filename)) or (targets[0] if len(targets) == 1 else None)
            if target is None or err.errno is None or err.filename not in (None, *names):
                raise
            raise _at(err, target) from err
        made: list[Path] = []
        try:
            for tmp, path in zip(tmps, targets, strict=True):
                _commit(tmp, path, overwrite)
                made.append(path)
        except BaseException:
            if not overwrite:
                for path in made:
                    with contextlib.suppress(OSError):
                        path.unlink()
            raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path`` atomically.

    Without ``overwrite`` the move fails with :class:`OverwriteError` if ``path``
    exists by then (so two writers cannot both succeed). On error the temporary
    file is removed and ``path`` is left as it was.
    """
    with atomic_paths([path], overwrite) as (tmp,):
        yield tmp


def _umask() -> int:
    """The process umask (read once: setting it to read it races with other threads)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def _default_mode(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    return 0o666 & ~_umask()


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False
) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path, overwrite) as tmp:
        write(tmp)
    return Path(path)
