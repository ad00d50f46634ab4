"""Atomic file writes: a file is either the old one or the complete new one, never half."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class OverwriteError(FileExistsError):
    """Raised instead of silently replacing a user's file."""


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` as a Path; raise :class:`OverwriteError` if it exists, unless overwriting."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OverwriteError(
            f"{path} already exists; choose another name or allow overwriting (--overwrite)"
        )
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` atomically.

    On error the temporary file is removed and ``path`` is left as it was.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give the result the permissions a plain open() would
        os.chmod(tmp_path, _default_mode(path))
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _default_mode(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False
) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path, overwrite) as tmp:
        write(tmp)
    return Path(path)
