"""Data sets named by a short spec string, so the CLI and the API share one parser.

Specs:
  ``digits``                 scikit-learn's 8x8 digits (embedded, the default)
  ``mnist:PATH``             MNIST as ``.npz`` (x_test/y_test or x/y) or an IDX folder/file pair
  ``fashion-mnist:PATH``     same formats (Debian: /usr/share/datasets/fashion-mnist)
  ``npz:PATH``               any ``.npz`` with arrays ``x`` and ``y``; or ``y`` and one array per graph
                             input, named like the input (token ids + attention mask, ...)

A suffix ``@N`` keeps the first N samples (``digits@200``); ``+train`` picks the
training split where one exists (``mnist:PATH+train``).
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import HwloopError


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32, sample first) and integer labels ``y``."""

    name: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int
    #: named arrays for a model with several graph inputs (``x`` is then the first of them)
    inputs: dict | None = None

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> "Dataset":
        named = {k: v[:n] for k, v in self.inputs.items()} if self.inputs else None
        return Dataset(self.name, self.x[:n], self.y[:n], self.n_classes, named)


_SPEC = re.compile(r"^(?P<kind>[a-z-]+)(?::(?P<path>.+?))?(?P<train>\+train)?(?:@(?P<n>\d+))?$")


def load_data(spec: str) -> Dataset:
    """Load the data set that ``spec`` names; raise ``HwloopError`` naming the spec when it cannot."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise HwloopError(f"data spec {spec!r}: not of the form KIND[:PATH][+train][@N] "
                          "(KIND: digits, mnist, fashion-mnist, npz)")
    kind, path, train, n = m["kind"], m["path"], bool(m["train"]), m["n"]
    if kind == "digits":
        ds = _digits(train)
    elif kind in ("mnist", "fashion-mnist"):
        if not path:
            raise HwloopError(f"data spec {spec!r}: {kind} needs a path, e.g. {kind}:/path/to/{kind}.npz")
        ds = _mnist_like(kind, Path(path), train)
    elif kind == "npz":
        if not path:
            raise HwloopError(f"data spec {spec!r}: npz needs a path, e.g. npz:data.npz")
        ds = _npz(Path(path), ("x", "y"), kind, named=True)
    else:
        raise HwloopError(f"data spec {spec!r}: unknown data set {kind!r} "
                          "(known: digits, mnist:PATH, fashion-mnist:PATH, npz:PATH)")
    if n is not None:
        ds = ds.head(int(n))
    if len(ds) == 0:
        raise HwloopError(f"data spec {spec!r}: no samples")
    if not np.all(np.isfinite(ds.x)):
        bad = int(np.argwhere(~np.isfinite(ds.x.reshape(len(ds), -1)))[0][0])
        raise HwloopError(f"data spec {spec!r}: input contains NaN or infinity (first at sample {bad})")
    return ds


def _digits(train: bool) -> Dataset:
    """Digits scaled to [0, 1]; a fixed split: the last 30% is the test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    cut = int(round(0.7 * len(y)))
    sl = slice(0, cut) if train else slice(cut, None)
    return Dataset("digits" + ("+train" if train else ""), x[sl], y[sl], 10)


def _npz(path: Path, keys: tuple[str, str], name: str, named: bool = False) -> Dataset:
    if not path.exists():
        raise HwloopError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            if named and keys[0] not in f.files and keys[1] in f.files and len(f.files) > 1:
                return _named(name, {k: f[k] for k in f.files if k != keys[1]}, f[keys[1]], path)
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise HwloopError(f"{path}: missing array(s) {', '.join(missing)} (has: {', '.join(f.files)})")
            x, y = f[keys[0]], f[keys[1]]
    except HwloopError:
        raise
    except Exception as e:  # zip/format errors, object arrays (pickles are refused)
        raise HwloopError(f"{path}: cannot read as .npz: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    return _finish(name, x, y, path, keys)


def _named(name: str, arrays: dict, y: np.ndarray, path: Path) -> Dataset:
    """One array per graph input, kept in their own dtypes (token ids stay integers)."""
    for k, v in arrays.items():
        if len(v) != len(y):
            raise HwloopError(f"{path}: array {k!r} has {len(v)} samples but y has {len(y)}")
    y = np.asarray(y).astype(np.int64).reshape(-1)
    first = next(iter(arrays.values()))
    return Dataset(f"{name}:{path}", first, y, int(max(10, y.max() + 1)) if len(y) else 10, arrays)


def _finish(name: str, x: np.ndarray, y: np.ndarray, path: Path, keys: tuple[str, str] = ("x", "y")) -> Dataset:
    x, y = np.asarray(x), np.asarray(y)
    for key, a in zip(keys, (x, y)):
        if a.dtype.kind not in "biuf":
            raise HwloopError(f"{path}: array {key!r} holds {a.dtype} values, not real numbers")
        if a.ndim == 0:
            raise HwloopError(f"{path}: array {key!r} is a single value, not one entry per sample")
    if x.ndim < 2:
        raise HwloopError(f"{path}: array {keys[0]!r} has shape {x.shape}: expected one row of inputs per sample")
    if y.ndim > 1 and y.size != len(y):
        raise HwloopError(f"{path}: array {keys[1]!r} has shape {y.shape}: expected one integer label per sample "
                          "(not one-hot)")
    if len(x) != len(y):
        raise HwloopError(f"{path}: {len(x)} inputs but {len(y)} labels")
    y = y.reshape(-1)
    if y.dtype.kind in "iu" and len(y) and y.min() < 0:   # float y may be a regressor's targets
        i = int(np.argmin(y))
        raise HwloopError(f"{path}: array {keys[1]!r}: label {y[i]:g} of sample {i} is negative (class indices "
                          "start at 0)")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32).reshape(len(x), -1) if x.ndim == 3 else x.astype(np.float32)
    y = y.astype(np.int64)
    return Dataset(f"{name}:{path}", x, y, int(max(10, y.max() + 1)) if len(y) else 10)


def _mnist_like(kind: str, path: Path, train: bool) -> Dataset:
    split = "train" if train else "test"
    if not path.exists():
        raise HwloopError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                names = f.files
        except Exception as e:
            raise HwloopError(f"{path}: cannot read as .npz: {e}") from None
        if f"x_{split}" in names:
            return _npz(path, (f"x_{split}", f"y_{split}"), kind)
        return _npz(path, ("x", "y"), kind)
    if path.is_dir():
        prefix = "train" if train else "t10k"
        imgs = _find(path, f"{prefix}-images")
        labs = _find(path, f"{prefix}-labels")
        return _finish(kind, _read_idx(imgs), _read_idx(labs), path)
    raise HwloopError(f"{path}: not an .npz file or a folder of IDX files")


def _find(folder: Path, stem: str) -> Path:
    for p in sorted(folder.iterdir()):
        if p.name.startswith(stem):
            return p
    raise HwloopError(f"{folder}: no IDX file starting with {stem!r}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise HwloopError(f"{path}: cannot read IDX file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise HwloopError(f"{path}: not an IDX file of unsigned bytes")
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd)
    if data.size != int(np.prod(dims)):
        raise HwloopError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} values)")
    return data.reshape(dims)


def shared_mnist() -> Path | None:
    """``../shared/data/mnist.npz`` beside the checkout, or $HWLOOP_MNIST, when present."""
    env = os.environ.get("HWLOOP_MNIST")
    if env:
        return Path(env) if Path(env).exists() else None
    p = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"
    return p if p.exists() else None
