"""Checks of user input that every entry point shares, so a bad value fails the same way everywhere.

Numbers a model is made of must be finite (``finite_initializers``: every
loader of ONNX files calls it), labels must name one of the model's outputs
(``labels_in_range``), and a job must fit in memory and on disk before it
starts (``require_memory``, ``require_disk``): each problem is one
``HwloopError`` line naming the file, tensor or figure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .errors import HwloopError

__all__ = ["finite_initializers", "labels_in_range", "require_memory", "require_disk", "size_text"]


def finite_initializers(proto, where: str | os.PathLike) -> None:
    """Refuse a model whose weights (initializers, Constant nodes) hold NaN or infinity."""
    from onnx import numpy_helper

    users: dict[str, str] = {}
    tensors = [(t.name, t) for t in proto.graph.initializer]
    for node in proto.graph.node:
        for name in node.input:
            users.setdefault(name, node.name or node.op_type)
        if node.op_type == "Constant":
            tensors += [(node.output[0], a.t) for a in node.attribute if a.name == "value"]
    for name, tensor in tensors:
        try:
            values = numpy_helper.to_array(tensor)
        except Exception:
            continue                           # the checker reports unreadable tensors
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            user = f" (used by node {users[name]!r})" if name in users else ""
            raise HwloopError(f"{where}: tensor {name!r}{user} holds {bad} NaN or infinite value(s) "
                              f"of {values.size}; the model's weights must be finite")


def labels_in_range(y: np.ndarray, n_classes: int, data: str, model: str | os.PathLike) -> None:
    """Refuse labels outside ``[0, n_classes)``: the model could never predict them."""
    y = np.asarray(y)
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise HwloopError(f"data {data}: label {int(y[i])} of sample {i} is outside [0, {n_classes}) "
                          f"(model {Path(model).name} has {n_classes} outputs; {bad.size} such label(s))")


def size_text(nbytes: float) -> str:
    """Bytes as a short human figure (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.3g} PiB"


def require_memory(nbytes: float, what: str, hint: str) -> None:
    """Refuse a job whose arrays need more memory than the machine has available now."""
    import psutil

    available = psutil.virtual_memory().available
    if nbytes > available:
        raise HwloopError(f"{what} needs about {size_text(nbytes)} of memory, {size_text(available)} is "
                          f"available: {hint}")


def require_disk(nbytes: float, path: str | os.PathLike, what: str, hint: str) -> None:
    """Refuse a store that cannot fit in the free space of the disk it goes to."""
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise HwloopError(f"{path}: {what} needs about {size_text(nbytes)} on disk, {size_text(free)} is free "
                          f"there: {hint}")
