"""Routing by service and version, per-client results, status JSON, limits and back-pressure, cancel."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

import grpc_helper.grid as grid
from grpc_helper import ResultCode, RpcException
from grpc_helper.grid import GridClient, GridController, GridLimits

from .conftest import WAIT, GridServer


def test_public_api() -> None:
    assert sorted(grid.__all__) == sorted(
        ["AsyncGridClient", "AsyncJobHandle", "Grid", "GridClient", "GridController", "GridLimits", "GridWorker",
         "JobError", "JobHandle", "__version__", "descriptors"]
    )
    for name in grid.__all__:
        assert getattr(grid, name) is not None


def test_routing_by_service_and_version(grid_server: GridServer, spawn_worker, grid_client: GridClient) -> None:
    spawn_worker("grid_handlers:echo", "echo", "1")
    v1 = grid_client.submit("echo", "1", b"one")
    v2 = grid_client.submit("echo", 2, b"two")  # nobody serves version 2 yet: waits
    other = grid_client.submit("other", "1", b"x")
    assert v1.result(WAIT) == b"one"
    assert not v2.done() and not other.done()
    assert grid_client.get_result(v2.job_id).state == grid.api.grid_pb2.JOB_QUEUED
    spawn_worker("grid_handlers:upper", "echo", "2")
    assert v2.result(WAIT) == b"TWO"
    assert not other.done()
    assert grid_client.cancel(other)
    with pytest.raises(concurrent.futures.CancelledError):
        other.result(WAIT)
    assert not grid_client.cancel(v1)  # already done


def test_results_go_to_their_client_only(grid_server: GridServer, spawn_worker) -> None:
    spawn_worker(service="echo", version="1")
    with grid_server.client() as alice, grid_server.client("bob") as bob:
        a = alice.submit_batch("echo", "1", [b"a%d" % i for i in range(50)])
        b = bob.submit_batch("echo", "1", [b"b%d" % i for i in range(50)])
        assert [h.result(WAIT) for h in a] == [b"a%d" % i for i in range(50)]
        assert [h.result(WAIT) for h in b] == [b"b%d" % i for i in range(50)]
        with pytest.raises(RpcException) as info:
            bob.get_result(a[0].job_id)
        assert info.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
        with pytest.raises(RpcException):
            bob.cancel(a[1].job_id)
    counters = grid_server.grid.status()["counters"]
    assert counters["delivered"] == counters["submitted"] == 100


def test_status_json(grid_server: GridServer, spawn_worker, grid_client: GridClient, controller: GridController) -> None:
    spawn_worker("grid_handlers:echo", "echo", "1", "--concurrency", "2", "--description", "w-echo")
    grid_server.wait(lambda s: len(s["workers"]) == 1)
    assert list(grid_client.map("echo", "1", [b"x"] * 5)) == [b"x"] * 5
    grid_client.submit("nobody", "7", b"waits")
    status = controller.status()
    json.dumps(status)
    [worker] = status["workers"]
    assert worker["description"] == "w-echo"
    assert (worker["service_id"], worker["service_version"], worker["state"]) == ("echo", "1", "active")
    assert worker["concurrency"] == 2 and worker["jobs_done"] == 5 and worker["in_flight"] == 0
    assert worker["pid"] > 0
    queues = {(q["service_id"], q["service_version"]): q for q in status["queues"]}
    assert queues[("nobody", "7")]["depth"] == 1 and queues[("nobody", "7")]["workers"] == 0
    assert queues[("echo", "1")]["workers"] == 1
    assert status["counters"]["submitted"] == 6 and status["counters"]["done"] == 5
    assert status["limits"]["max_jobs"] == GridLimits().max_jobs
    out = grid_server.cli("status", "--json")
    assert json.loads(out.stdout)["counters"]["submitted"] == 6
    out = grid_server.cli("status")
    assert "w-echo echo/1 active" in out.stdout and "nobody/7: depth=1" in out.stdout


def test_limits_and_back_pressure(grid_server_factory) -> None:
    server = grid_server_factory(GridLimits(max_jobs=10, max_payload_bytes=64, max_batch=8))
    with server.client(max_batch=8) as client:
        with pytest.raises(RpcException) as info:
            client.submit("echo", "1", b"x" * 65)
        assert info.value.rc == ResultCode.ERROR_RESOURCE_EXHAUSTED and "max_payload_bytes=64" in info.value.message
        assert info.value.status.name == "RESOURCE_EXHAUSTED"
        handles = client.submit_batch("echo", "1", [b"x"] * 10)  # nobody serves echo: they stay queued
        with pytest.raises(RpcException) as info:
            client.submit("echo", "1", b"one too many")
        assert info.value.rc == ResultCode.ERROR_RESOURCE_EXHAUSTED and "max_jobs=10" in info.value.message
        for handle in handles[:5]:
            assert handle.cancel()  # cancelled results delivered: room again
        server.wait(lambda s: s["held"]["jobs"] == 5)
        assert len(client.submit_batch("echo", "1", [b"y"] * 5)) == 5
    assert server.grid.status()["counters"]["rejected"] == 1
