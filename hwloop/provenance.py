"""Where a store's numbers came from: versions, the command line, the time, the devices, the data's hash.

Why one module: every store (runs, sweeps) records the same facts about the
session that wrote it, and a resumed run checks its data against the hash
recorded here; one place collects them so they are spelled the same way.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import shlex
import sys
from importlib import metadata
from typing import Iterable

import numpy as np

#: packages whose versions decide a run's numbers
PACKAGES = ("torch", "onnxruntime", "onnx", "numpy", "zarr")


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    """hwloop's and its numerical packages' installed versions (None when a package is missing)."""
    import hwloop

    out = {"hwloop": hwloop.__version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def command_line() -> str:
    """The command that started this process, quoted as a shell would need it."""
    return shlex.join(sys.argv)


def now() -> str:
    """The current UTC time, to the second, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def describe_devices(layers: Iterable, per_layer: Iterable) -> list[dict]:
    """One dict per analog layer: its index and name, its device's ``describe()`` and where it was declared."""
    return [{"layer": L.index, "name": L.name, **dev.describe(), **({"origin": dev.origin} if dev.origin else {})}
            for L, dev in zip(layers, per_layer)]


def data_sha256(arrays: Iterable[np.ndarray], layout: bool = False) -> str:
    """SHA-256 over the arrays' bytes in order (no copy of contiguous data): a run's resume key, so the
    same values fed in another shape resume.  ``layout``: each array's dtype and shape are hashed before
    its bytes (the check caches' key: the same bytes read as another shape or type are other data)."""
    h = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        if layout:
            h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def session() -> dict:
    """What a sweep store records about the session: versions, Python, the command and the start time."""
    return {**versions(), "python": sys.version.split()[0], "command": command_line(), "started": now()}


def run_provenance(model, ds, x: dict[str, np.ndarray], per_layer: list, settings, batch_size: int) -> dict:
    """Everything needed to say where a run's numbers came from (and to check a resume): the model's and
    data's hashes, seed, geometry, devices, versions, time and command, then ``settings.provenance``."""
    attrs = {
        "model_path": str(model.path.resolve()), "model_sha256": model.sha256, "data": ds.name, "n_samples": len(ds),
        "seed": int(settings.seed), "repeats": int(settings.repeats), "batch_size": int(batch_size),
        "devices": describe_devices(model.layers, per_layer),
        "versions": dict(versions()), "start_time": now(), "command_line": command_line(),
    }
    if settings.out is not None:
        attrs["data_sha256"] = data_sha256([*x.values(), ds.y])
    attrs.update(settings.provenance or {})
    return attrs
