"""The grid's descriptors hosted by a thread-based ``RpcServer`` (next to sync services): same protocol."""

from __future__ import annotations

import threading

from grpc_helper import Access
from grpc_helper.grid import GridClient, GridLimits, GridWorker, descriptors

from .conftest import WAIT


def test_sync_server_hosts_the_grid(rpc_server_factory) -> None:
    limits = GridLimits(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    descs = descriptors(limits=limits, workers=Access.ANYONE)
    server = rpc_server_factory(descs, options=limits.server_options())
    endpoint = f"127.0.0.1:{server.port}"
    worker = GridWorker(endpoint, "upper", "1", bytes.upper, concurrency=2)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(worker.run(install_signals=False)))
    runner.start()
    try:
        assert worker.registered.wait(WAIT)
        with GridClient(endpoint, timeout=10) as client:
            assert list(client.map("upper", "1", [b"a%d" % i for i in range(50)])) == [b"A%d" % i for i in range(50)]
            waiting = client.submit("nobody", "1", b"x")
            assert client.cancel(waiting)
    finally:
        server.shutdown(2.0)  # the grid closes first: the worker gets STOP and leaves cleanly
        runner.join(WAIT)
    assert codes == [0]
    assert descs[0].manager.grid.status()["counters"]["done"] == 50
