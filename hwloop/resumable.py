"""One resumable Zarr store, shared by the run, calibration and sweep stores.

Each of hwloop's stores records work done in units (a run's batches, a
calibration's probe blocks, a sweep's points) so that a process killed at any
moment loses nothing recorded and a resumed one does only what is missing.
They share one life cycle, kept here once:

- **create**: refuse an existing path (unless ``overwrite``), build the store
  in a temporary folder beside it and rename it into place
  (``hwloop.files.atomic_dir``), so a store exists complete or not at all;
  its attributes pass through JSON first (``json_attrs``) so nothing
  unserialisable is half-written.
- **open / resume**: put back an old copy an interrupted ``--overwrite`` set
  aside, open the group, decode its CF-style attributes (``hwloop.cf``),
  check its format and that every array of its manifest is on disk, and
  refuse to continue a store made for other settings (``check_resume``).
- **mark done**: a unit's completion marker (an int array, one chunk per
  unit) is written after all of its data, so a marked unit is complete and an
  unmarked one is simply done again; ``lost`` finds marked units whose data a
  disk lost.  (The sweep marks a point done by writing its ``accuracy`` last,
  NaN meaning "not done".)

The writer holds ``hwloop.files.store_lock`` on the path while it writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator

import numpy as np
import zarr

from . import cf
from .errors import HwloopError
from .files import atomic_dir, restore_for_reading


def json_attrs(attrs: dict, path: str | Path) -> dict:
    """``attrs`` as a store will give them back (tuples become lists); HwloopError naming ``path``
    when something in them is not JSON-serialisable."""
    try:
        return json.loads(json.dumps(attrs))
    except (TypeError, ValueError) as e:
        raise HwloopError(f"{path}: provenance is not JSON-serialisable: {e}") from None


@contextlib.contextmanager
def creating(path: str | Path, *, overwrite: bool, exists: str) -> Iterator[Path]:
    """Yield the temporary folder (not yet created) a new store is built in; renamed onto ``path``
    once the block ends without error.  An existing ``path`` is refused with ``exists`` unless
    ``overwrite`` (then the old store goes only once the new one is complete)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise HwloopError(f"{path}: {exists}")
    with atomic_dir(path) as tmp:
        yield tmp


class ZarrStore:
    """An opened store: ``root`` (the Zarr group), ``attrs`` (decoded) and its completion markers."""

    #: what the store is, in messages ("run store", ...)
    KIND: ClassVar[str] = "store"
    #: how a folder that is not such a store is named in messages
    NOT_A: ClassVar[str] = "not a store"
    #: the ``format`` attribute every store of this kind has (None: checked by ``check_format``)
    FORMAT: ClassVar[str | None] = None
    #: older stores kept their attributes nested under this key
    LEGACY_ATTRS: ClassVar[str | None] = None
    #: the completion markers (one per unit), and where older stores kept them
    DONE: ClassVar[str | None] = None
    LEGACY_DONE: ClassVar[str | None] = None

    def __init__(self, path: str | Path, mode: str = "r+"):
        self.path = Path(path)
        restore_for_reading(self.path)      # a kill during --overwrite left the old store aside
        if not self.path.exists():
            raise HwloopError(f"{self.path}: no such {self.KIND}")
        try:
            self.root = zarr.open_group(str(self.path), mode=mode)
            attrs = self.root.attrs
            self.attrs: dict = dict(attrs[self.LEGACY_ATTRS]) if self.LEGACY_ATTRS and self.LEGACY_ATTRS in attrs \
                else cf.decode_attrs(attrs)
        except Exception as e:
            raise HwloopError(f"{self.path}: {self.NOT_A} ({type(e).__name__}: {e})") from None
        self.check_format()
        self.done_name = self.DONE if self.DONE is None or (self.path / self.DONE).parent.is_dir() \
            else self.LEGACY_DONE

    def check_format(self) -> None:
        """HwloopError unless the attributes are this kind of store's."""
        if self.attrs.get("format") != self.FORMAT:
            raise HwloopError(f"{self.path}: {self.NOT_A} (format {self.attrs.get('format')!r}, "
                              f"expected {self.FORMAT!r})")

    def require(self, names: Iterable[str], remedy: str) -> None:
        """HwloopError when one of the arrays ``names`` has lost its metadata (a damaged store)."""
        missing = [n for n in names if not (self.path / n / "zarr.json").is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise HwloopError(f"{self.path}: damaged {self.KIND}: array {missing[0]!r} is missing{more}; {remedy}")

    @functools.cached_property
    def markers(self) -> zarr.Array:
        """The completion markers, one per unit (every chunk is written, a reset 0 included)."""
        try:
            return self.root[self.done_name].with_config({"write_empty_chunks": True})
        except Exception as e:
            raise HwloopError(f"{self.path}: damaged {self.KIND}: cannot read {self.done_name} ({e})") from None

    def marked(self) -> np.ndarray:
        """Per unit: True where its completion marker is set."""
        try:
            return np.asarray(self.markers[:], bool)
        except HwloopError:
            raise
        except Exception as e:
            raise HwloopError(f"{self.path}: damaged {self.KIND}: cannot read {self.done_name} ({e})") from None

    def mark_done(self, unit: int, done: bool = True) -> None:
        """Set (last, once all of the unit's data is written) or reset unit ``unit``'s marker."""
        self.markers[unit] = int(done)

    def lost(self, files: Callable[[int], Iterable[str]]) -> list[int]:
        """Marked units with one of their ``files(k)`` (paths inside the store) missing."""
        return [k for k in np.flatnonzero(self.marked()).tolist()
                if not all((self.path / f).is_file() for f in files(k))]

    def check_resume(self, expect: dict, keys: Iterable[str]) -> None:
        """Refuse to continue a store whose attributes differ from ``expect`` at one of ``keys``."""
        for key in keys:
            if self.attrs.get(key) != expect.get(key):
                raise HwloopError(f"{self.path}: cannot resume: {key} differs "
                                  f"(store has {self.attrs.get(key)!r}, this run has {expect.get(key)!r})")

    def set_attrs(self, **changes) -> None:
        """Replace attribute keys (the group's metadata file is replaced atomically)."""
        self.attrs = json_attrs({**self.attrs, **changes}, self.path)
        self.root.attrs.put(cf.store_attrs(self.attrs))
