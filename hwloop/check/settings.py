"""What determines a check's numbers besides the model and the target, in one value.

``Settings`` travels unchanged from the CLI, the pytest plugin and the Python
API to ``check_model``, the matrix runner, Dask workers and the result cache
(its ``to_dict`` is part of the cache key).  ``Settings.of`` builds one from
the flat keywords people write (``max_drop=0.02, max_repeats=50``), naming
any keyword it does not know.  Also the pieces of the result caches' keys
and entries (``data_sha256``, ``write_entry``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from .. import provenance
from ..data import Dataset
from ..errors import HwloopError
from ..files import atomic_path
from .bars import Bars
from .stats import SCOPES

#: the keywords of ``Bars`` (accepted flat by ``Settings.of``)
BAR_KEYS = ("min_accuracy", "max_drop", "max_flip_rate", "class_min", "metric", "max_increase")


@dataclass(frozen=True)
class Settings:
    """Everything besides model and target that determines a check's numbers.

    ``repeats``: a fixed design (one look at exactly that many repeats);
    otherwise looks at 4, 8, 16, ... up to ``max_repeats``.  ``analytic``:
    the screen from the predicted covariance instead of sampling.  ``device``:
    where the sampled checks' emulators compute (None or ``cpu``: the default
    numbers; ``cuda[:N]``: torch on a GPU, as ``hwloop run --device``).
    """

    bars: Bars
    data: str = "digits"
    repeats: int | None = None
    max_repeats: int = 100
    confidence: float = 0.95
    scope: str = "population"
    seed: int = 0
    batch_size: int | None = None
    analytic: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise HwloopError(f"--scope {self.scope!r}: not one of {', '.join(SCOPES)}")

    @classmethod
    def of(cls, bars: Bars | None = None, **options) -> "Settings":
        """From flat keywords: the bars' (``max_drop=...``, ``class_min={3: 0.8}``) and the settings'."""
        bar_kw = {k: options.pop(k) for k in BAR_KEYS if k in options}
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise HwloopError(f"check: unknown argument(s) {', '.join(unknown)} (bars: {', '.join(BAR_KEYS)}; "
                              f"settings: {', '.join(f.name for f in fields(cls) if f.name != 'bars')})")
        if bars is not None and bar_kw:
            raise HwloopError(f"check: give the bars either as bars=Bars(...) or as keywords, not both "
                              f"({', '.join(bar_kw)})")
        if isinstance(bar_kw.get("class_min"), dict):
            bar_kw["class_min"] = tuple(bar_kw["class_min"].items())
        if "class_min" in bar_kw:
            bar_kw["class_min"] = tuple(tuple(p) for p in bar_kw["class_min"])
        return cls(bars if bars is not None else Bars(**bar_kw), **options)

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "bars"},
                "bars": self.bars.to_dict()}


def data_sha256(ds: Dataset) -> str:
    """The cache keys' hash of a data set: ``hwloop.provenance.data_sha256`` of its inputs (x, or every named
    input of a model with several) and y, with their dtypes and shapes."""
    return provenance.data_sha256((*(ds.inputs or {"x": ds.x}).values(), ds.y), layout=True)


def write_entry(cache: Path | None, name: str, write: Callable[[Path], None]) -> None:
    """Write the cache entry ``cache/name`` whole or not at all (``write(tmp)`` fills a staged file);
    nothing when ``cache`` is None."""
    if cache is None:
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache / name) as tmp:
            write(Path(tmp))
    except OSError as e:
        raise HwloopError(f"{cache}: cannot write the result cache ({e.strerror or e}); "
                          "give --cache DIR or --no-cache") from None
