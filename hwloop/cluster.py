"""A Dask client for work spread over processes: a local cluster of N workers, or an existing scheduler.

Shared by the walking sweeps and the check matrices, so both start, connect
and fail the same way (one ``HwloopError`` line when no cluster can be had).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .errors import HwloopError


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator["object"]:
    """``scheduler`` (tcp://HOST:PORT) if given, else a local cluster of ``workers`` single-threaded processes."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
    except Exception as e:
        if cluster is not None:
            cluster.close()
        raise HwloopError(f"Dask {scheduler or 'local cluster'}: cannot start or connect ({e})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
