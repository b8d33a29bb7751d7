"""Atomic writes: build a file or folder under a temporary name beside its target, then rename it into place.

So a crash or an error never leaves a half-written report, profile or store
at the real path (an earlier version stays until the new one is complete).

    with atomic_path("out/report.html") as tmp:
        tmp.write_text(html)                  # or any writer that takes a path

    with atomic_dir("runs/run.zarr", overwrite=True) as tmp:
        zarr.open_group(str(tmp), mode="w")   # the temp folder does not exist yet
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_dir", "temp_sibling"]


def temp_sibling(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden name in ``path``'s folder (same file system, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}")


def _umask() -> int:
    """The process umask, read without changing it where the system says it (os.umask is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    The file gets the usual permissions of a new file (``0o666 & ~umask``), not
    ``tempfile``'s 0600.  On an error the temporary file is removed and ``path``
    is left as it was.  The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: nothing was written for {path}")
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder name beside ``path`` (not yet created); on success move it onto ``path``.

    An existing ``path`` (folder or file) is removed only once the new one is
    complete, and only with ``overwrite``; otherwise ``FileExistsError``.  On an
    error the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, ".partial")
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{path}: exists")
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
