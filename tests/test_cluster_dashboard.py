"""Two local Dask clusters at once (a check matrix while a sweep runs): no dashboard, so no port clash warning."""

import warnings

from hwloop.cluster import dask_client


def test_two_local_clusters_at_once_warn_of_no_port_in_use():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with dask_client(None, 1) as a, dask_client(None, 1) as b:
            assert a.submit(sum, [1, 2]).result() == 3 and b.submit(sum, [3, 4]).result() == 7
            servers = [c.cluster.scheduler.http_server for c in (a, b)]
            assert [s.address for s in servers] == ["127.0.0.1", "127.0.0.1"]       # loopback only
            assert 8787 not in [s.port for s in servers] and servers[0].port != servers[1].port
    clashes = [str(w.message) for w in seen if "already in use" in str(w.message)]
    assert clashes == []
