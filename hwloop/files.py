"""Atomic writes and the writer's lock: nothing at a real path is ever half-written.

A file or folder is built under a temporary name beside its target, then
renamed into place, so a crash or an error never leaves a half-written report,
profile or store at the real path (an earlier version stays until the new one
is complete, and is renamed aside, not deleted, while the new one moves in).
A store's writer holds ``store_lock`` so that two processes never write one
path; on taking it, leftovers of an interrupted write are recovered or removed.

    with atomic_path("out/report.html") as tmp:
        tmp.write_text(html)                  # or any writer that takes a path

    with atomic_dir("runs/run.zarr", overwrite=True) as tmp:
        zarr.open_group(str(tmp), mode="w")   # the temp folder does not exist yet
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Iterator

from .errors import HwloopError

__all__ = ["atomic_path", "atomic_dir", "temp_sibling", "check_output", "recover", "store_lock", "lock_path",
           "restore_for_reading"]


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
    _mkdir_parent(path)
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

    An existing ``path`` (folder or file) is replaced only with ``overwrite``
    (otherwise ``FileExistsError``), in three renames-and-deletes that never
    leave a half-store at ``path``: the old one is renamed aside
    (``.NAME.*.old``), the new one renamed in, then the old one deleted.  A
    kill between the first two steps leaves ``path`` missing and the old copy
    aside; :func:`recover` (run by every writer under its lock, and by readers
    that find ``path`` missing) renames it back.  On an error the temporary
    folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    _mkdir_parent(path)
    tmp = temp_sibling(path, ".partial")
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{path}: exists")
            aside = temp_sibling(path, ".old")
            os.replace(path, aside)             # 1. the old one aside, still complete
            try:
                os.replace(tmp, path)           # 2. the new one in
            except BaseException:
                os.replace(aside, path)
                raise
            _fsync_dir(path.parent)
            _remove(aside)                      # 3. only now is anything deleted
        else:
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (a power cut after the rename keeps it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mkdir_parent(path: Path) -> list[Path]:
    """Create ``path``'s folder (returns the folders created, deepest first); a parent that is a
    file or not writable is one HwloopError line."""
    check_output(path)
    created = []
    folder = path.absolute().parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HwloopError(f"{path}: cannot create its folder: {e.strerror or e}") from None
    return created


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse early an output that cannot be written: HwloopError naming ``path`` and why.

    The nearest existing folder above ``path`` must be a folder (not a file)
    that this process may write in.  Nothing is created.
    """
    path = Path(path)
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            break
        parent = parent.parent
    if not parent.is_dir():
        raise HwloopError(f"{path}: cannot write {what}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HwloopError(f"{path}: cannot write {what}: folder {parent} is not writable")
    return path


def leftovers(path: str | os.PathLike, suffix: str) -> list[Path]:
    """Hidden siblings ``.NAME.<id><suffix>`` that an interrupted write of ``path`` left behind."""
    path = Path(path)
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return []
    pre = f".{path.name}."
    return sorted(path.with_name(n) for n in names
                  if n.startswith(pre) and n.endswith(suffix) and len(n) == len(pre) + 8 + len(suffix))


def recover(path: str | os.PathLike) -> list[str]:
    """Finish or undo a write of ``path`` that a kill interrupted; returns what was done, for the user.

    Call it only while holding ``path``'s lock (:func:`store_lock` does): a
    missing ``path`` with a copy renamed aside gets that copy back; copies aside
    of a ``path`` that exists are deleted; temporary ``.partial`` folders are
    deleted.
    """
    path = Path(path)
    notes = []
    asides = leftovers(path, ".old")
    if asides and not (path.exists() or path.is_symlink()):
        back = max(asides, key=lambda p: p.stat().st_mtime)
        os.replace(back, path)
        asides.remove(back)
        notes.append(f"{path}: restored the previous version ({back.name}) that an interrupted "
                     "--overwrite had set aside")
    for p in asides + leftovers(path, ".partial"):
        _remove(p)
        notes.append(f"{path}: removed {p.name}, left by an interrupted write")
    return notes


def restore_for_reading(path: str | os.PathLike) -> None:
    """Readers: when ``path`` is missing but an interrupted --overwrite set the old copy aside, and
    no writer holds the lock, put it back (so a kill never makes a store vanish)."""
    path = Path(path)
    if path.exists() or not leftovers(path, ".old"):
        return
    try:
        with store_lock(path):                # prints what it restored
            pass
    except HwloopError:
        pass                                  # a writer is busy with it; it will finish or recover


# -- the writer's lock ---------------------------------------------------------------------
def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: a hidden sibling, so it survives the store being replaced."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def store_lock(path: str | os.PathLike, *, quiet: bool = False) -> Iterator[list[str]]:
    """Hold the exclusive writer's lock on ``path`` (a run, sweep or calibration store).

    The lock is the file ``.NAME.lock`` beside ``path`` holding the holder's pid,
    host and process start time, and locked with ``flock`` (released by the
    kernel when the holder dies).  A second writer gets ``HwloopError`` naming
    the holder.  A lock left by a process that is gone is stale and taken over.
    On entry, what an interrupted earlier write left is recovered or removed
    (:func:`recover`), and the notes are printed on stderr (and yielded).
    """
    path = Path(path)
    created = _mkdir_parent(path)
    lock = lock_path(path)
    fd, notes = _acquire(lock, path)
    try:
        notes += recover(path)
        if not quiet:
            for note in notes:
                print(f"hwloop: {note}", file=sys.stderr)
        yield notes
    finally:
        try:
            lock.unlink(missing_ok=True)      # while still holding it: see _acquire's inode check
        finally:
            os.close(fd)
        for folder in created:                # a writer that failed early leaves no empty folders
            try:
                folder.rmdir()
            except OSError:
                break


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:
        return None


def _alive(holder: dict) -> bool:
    """Whether the process named in a lock file still runs (on this host; other hosts: assume so)."""
    if holder.get("host") != socket.gethostname():
        return True
    import psutil

    try:
        proc = psutil.Process(int(holder["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = holder.get("started")
        return started is None or abs(proc.create_time() - float(started)) < 0.05
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.Error:
        return True


def _holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw) if raw.strip() else {}
        return holder if isinstance(holder, dict) else {"pid": "?", "host": "?"}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}


def _acquire(lock: Path, path: Path) -> tuple[int, list[str]]:
    """Open, flock and fill ``lock``; HwloopError when another writer holds ``path``."""
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise HwloopError(f"{path}: cannot create lock file {lock.name}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise HwloopError(f"{path}: in use by another writer (pid {holder.get('pid', '?')} on "
                              f"{holder.get('host', '?')}); wait for it to finish or use another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:                      # the holder removed it as we opened it: lock the new one
            os.close(fd)
            continue
        holder, notes = _holder(fd), []
        if holder and _alive(holder):     # written by a process that does not hold the flock
            os.close(fd)
            raise HwloopError(f"{path}: in use by another writer (pid {holder.get('pid', '?')} on "
                              f"{holder.get('host', '?')}, lock file {lock}); delete the lock file only "
                              "if that process is gone")
        if holder:
            notes.append(f"{path}: took over the stale lock of pid {holder.get('pid', '?')} "
                         f"on {holder.get('host', '?')} (that writer is gone)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        os.fsync(fd)
        return fd, notes
    raise HwloopError(f"{path}: cannot take the lock {lock.name} (it keeps changing)")
