"""Server service: remote shutdown answers first, then stops the server; wait_shutdown() sees any stop."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest

from grpc_helper import ResultCode, RpcException
from grpc_helper.api.server_pb2 import ShutdownRequest


def wait_shutdown(svc: Any, server: Any, timeout: float) -> bool:
    if svc.runner is None:
        return bool(server.wait_shutdown(timeout))
    return bool(svc.runner.run(server.aio.wait_shutdown(timeout)))


def test_shutdown_answers_then_stops(svc: Any) -> None:
    server = svc.server()
    client = svc.client(server.port, timeout=1)
    assert not wait_shutdown(svc, server, 0.01)
    client.server.shutdown(ShutdownRequest(delay=0))  # answered: no error
    assert wait_shutdown(svc, server, 30)
    with pytest.raises(RpcException) as info:  # stopped: unreachable for the client's timeout
        client.server.shutdown(ShutdownRequest())
    assert info.value.rc == ResultCode.ERROR_RPC


def test_wait_shutdown_sees_a_local_shutdown(svc: Any) -> None:
    server = svc.server()
    server.shutdown()
    assert wait_shutdown(svc, server, 30)


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf, 3601.0])
def test_bad_delays_are_refused(svc: Any, delay: float) -> None:
    server = svc.server()
    with pytest.raises(RpcException) as info:
        svc.client(server.port).server.shutdown(ShutdownRequest(delay=delay))
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT and "0 to 3600" in info.value.message
    assert not wait_shutdown(svc, server, 0.01)


def test_a_pending_shutdown_is_cancelled_by_a_local_one(svc: Any) -> None:
    server = svc.server()
    client = svc.client(server.port)
    client.server.shutdown(ShutdownRequest(delay=600))
    with pytest.raises(RpcException) as info:
        client.server.shutdown(ShutdownRequest(delay=1))
    assert info.value.rc == ResultCode.ERROR_STATE_UNEXPECTED
    server.shutdown()  # does not wait for the pending delay; its timer is cancelled
    assert wait_shutdown(svc, server, 30)
