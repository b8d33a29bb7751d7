"""Several models x several profiles in one call, locally or on Dask, each pair cached.

A pair's numbers depend only on its own inputs (keyed randomness), so the
order, the worker and the process do not matter: a Dask run equals a local
one.  Jobs carry the model's bytes and the profile's text, so workers need no
shared files (the data spec is loaded by each worker).  A result is cached
as JSON under the sha256 of (model, profile, data, seed, settings, hwloop
version): an unchanged pair is not re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ..data import load_data
from ..errors import HwloopError
from ..graph import Model, load_model
from .model import Target, check_model, resolve_target
from .result import CheckResult
from .settings import Settings, data_sha256, write_entry

__all__ = ["Job", "Settings", "cache_key", "data_sha256", "default_cache_dir", "run_job", "run_matrix", "run_pair"]


@dataclass(frozen=True)
class Job:
    model_path: str
    model_bytes: bytes
    target: Target
    settings: Settings


def run_job(job: Job) -> dict:
    """Run one pair (in any process): the result as a plain dict."""
    with tempfile.TemporaryDirectory(prefix="hwloop-check-") as tmp:
        path = Path(tmp) / Path(job.model_path).name
        path.write_bytes(job.model_bytes)
        result = run_pair(path, job.target, job.settings)
    result.model = job.model_path
    return result.to_dict()


def run_pair(model, target: Target, s: Settings, cache: Path | None = None, *, workers: int | None = None,
             scheduler: str | None = None) -> CheckResult:
    """One model on one target with settings ``s``: sampling, or the analytic screen (whose per-sample
    class probabilities are kept under ``cache``/analytic, so new bars on a screened pair cost no prediction).
    ``workers``/``scheduler``: the sampling's looks sharded over Dask (``check_model``)."""
    if s.analytic:
        from .analytic import analytic_check

        m = model if not isinstance(model, (str, os.PathLike)) else load_model(model)
        return analytic_check(m, target, load_data(s.data), s, cache=None if cache is None else cache / "analytic")
    return check_model(model, profile=target, settings=s, workers=workers, scheduler=scheduler)


def cache_key(model_sha: str, target: Target, data_sha: str, s: Settings) -> str:
    from .. import __version__

    blob = json.dumps({"model": model_sha, "target": target.sha256, "data": data_sha, "settings": s.to_dict(),
                       "hwloop": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$HWLOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/hwloop/check`` (~/.cache/hwloop/check)."""
    if os.environ.get("HWLOOP_CACHE_DIR"):
        return Path(os.environ["HWLOOP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hwloop" / "check"


def _cached(cache: Path | None, key: str) -> CheckResult | None:
    if cache is None or not (cache / f"{key}.json").is_file():
        return None
    try:
        return replace(CheckResult.from_dict(json.loads((cache / f"{key}.json").read_text())), cached=True)
    except (ValueError, KeyError, TypeError):
        return None       # an unreadable entry is recomputed (and overwritten)


def _store(cache: Path | None, key: str, result: CheckResult) -> None:
    write_entry(cache, f"{key}.json", lambda tmp: tmp.write_text(json.dumps(result.to_dict())))


def run_matrix(models: Sequence[str | os.PathLike | Model], targets: Sequence, settings: Settings, *,
               workers: int | None = None, scheduler: str | None = None,
               cache: str | os.PathLike | None = None) -> list[CheckResult]:
    """Every model on every target (models outer), in that order; ``cache``: a folder, or None for none.

    Models, profiles and the data are loaded here first, so a wrong name or
    file is reported before any work starts.  With ``workers``/``scheduler`` the pairs run on Dask, one
    pair per task; a single pair to run (sampled) has its looks' batches sharded over the workers instead.
    """
    if not models or not targets:
        raise HwloopError("give at least one model and one --profile")
    from ..cluster import check_workers

    check_workers(workers)
    loaded = [m if isinstance(m, Model) else load_model(m) for m in models]
    tgts = [resolve_target(t) for t in targets]
    data_sha = data_sha256(load_data(settings.data))
    cache = Path(cache) if cache is not None else None
    jobs, keys, results = [], [], []
    for path, m in zip(models, loaded):
        path = m.path if isinstance(path, Model) else path
        for t in tgts:
            keys.append(cache_key(m.sha256, t, data_sha, settings))
            results.append(_cached(cache, keys[-1]))
            jobs.append(Job(str(path), m.path.read_bytes(), t, settings))
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) == 1 and (workers or scheduler) and not settings.analytic:
        i = todo[0]
        fresh = [run_pair(loaded[i // len(tgts)], jobs[i].target, settings, workers=workers,
                          scheduler=scheduler).to_dict()]
    elif todo and (workers or scheduler):
        fresh = _run_dask([jobs[i] for i in todo], workers, scheduler)
    else:
        fresh = [run_pair(loaded[i // len(tgts)], jobs[i].target, settings, cache).to_dict() for i in todo]
    for i, d in zip(todo, fresh):
        d["model"] = jobs[i].model_path
        results[i] = CheckResult.from_dict(d)
        _store(cache, keys[i], results[i])
    return results


def _run_dask(jobs: list[Job], workers: int | None, scheduler: str | None) -> list[dict]:
    from ..cluster import dask_client

    with dask_client(scheduler, workers) as client:
        return client.gather([client.submit(run_job, j, pure=False) for j in jobs])
