"""Authorization and hostile input: admin-only controller, who may be a worker, sessions owned by identities,
forged results, bounded start_worker, validated delays, payload limits beyond gRPC's default message size."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest

from grpc_helper import Access, ResultCode, RpcClient, RpcException
from grpc_helper._cli.exits import ExitCode
from grpc_helper.grid import GridClient, GridLimits
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc

from .conftest import ALICE, BOB, FAST, WAIT, GridServer


def test_controller_changes_are_admin_only(grid_server: GridServer, spawn_worker) -> None:
    spawn_worker()
    grid_server.wait(lambda s: len(s["workers"]) == 1)
    [worker] = grid_server.workers()
    with grid_server.controller(ALICE) as ctl:
        assert ctl.status()["workers"][0]["id"] == worker["id"]  # reading is for any authenticated caller
        for call in (
            lambda: ctl.stop_worker(worker["id"]),
            lambda: ctl.start_worker(f"{grid_server.endpoint} evil echo 1"),
            lambda: ctl.shutdown(),
        ):
            with pytest.raises(RpcException) as info:
                call()
            assert info.value.rc == ResultCode.ERROR_PERMISSION_DENIED and "reserved to" in info.value.message
    out = grid_server.cli("shutdown", name=ALICE)
    assert out.returncode == ExitCode.DENIED and out.stderr.startswith("error: ")
    status = grid_server.status()
    assert len(status["workers"]) == 1 and not status["spawned"] and not status["closed"]


def test_who_may_register_as_worker_is_configurable(grid_server_factory, spawn_worker) -> None:
    server: GridServer = grid_server_factory(FAST, workers=Access.rule(lambda who: who.name == "worker", "grid workers"))
    refused = spawn_worker(server=server, name=ALICE)
    assert refused.wait(WAIT) == ExitCode.DENIED
    spawn_worker(server=server)  # "worker" may
    server.wait(lambda s: [w["owner"] for w in s["workers"]] == ["worker"])


def test_sessions_belong_to_their_identity(grid_server: GridServer) -> None:
    with grid_server.client(ALICE) as alice:
        job = alice.submit("nobody", "1", b"alice's")
        with grid_server.client(BOB, session=alice.session) as bob:  # bob knows alice's session id
            for call in (lambda: bob.get_result(job.job_id), lambda: bob.cancel(job.job_id),
                         lambda: bob.submit("nobody", "1", b"into alice's session")):
                with pytest.raises(RpcException) as info:
                    call()
                assert info.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
        rpc = RpcClient("127.0.0.1", grid_server.server.port, {"grid": (pb_grpc.GridClientServiceStub, 1)},
                        credentials=grid_server.credentials(BOB), timeout=5)
        with rpc:
            with pytest.raises(RpcException) as empty:
                rpc.grid.get_result(pb.JobRef(job_id=job.job_id, session=""))
            assert empty.value.rc == ResultCode.ERROR_PARAM_INVALID and "session is required" in empty.value.message
            with pytest.raises(RpcException):
                rpc.grid.cancel(pb.JobRef(job_id=job.job_id, session=""))
        assert alice.get_result(job.job_id).state == pb.JOB_QUEUED  # untouched


def _forger(server: GridServer, job_id: int, sent: threading.Event, leave: threading.Event) -> Iterator[pb.ServerMessage]:
    def messages() -> Iterator[pb.WorkerMessage]:
        yield pb.WorkerMessage(register=pb.WorkerRegister(service_id="other", service_version="1", description="forger"))
        for lease in range(1, 4):
            yield pb.WorkerMessage(results=pb.WorkerResults(
                results=[pb.WorkerResult(job_id=job_id, lease=lease, ok=True, data=b"forged")], started=[job_id]))
        sent.set()
        leave.wait(WAIT)

    rpc = RpcClient("127.0.0.1", server.server.port, {"w": (pb_grpc.GridWorkerServiceStub, 1)},
                    credentials=server.credentials("worker"), timeout=5)
    with rpc:
        yield from rpc.w.work(messages())


def test_forged_results_are_refused(grid_server: GridServer, spawn_worker, job_started) -> None:
    spawn_worker("grid_handlers:signalled_slow", env=job_started.env)
    with grid_server.client() as client:
        handle = client.submit("echo", "1", b"real")
        job_started.wait()  # leased to the honest worker, running
        sent, leave = threading.Event(), threading.Event()
        forging = threading.Thread(target=lambda: list(_forger(grid_server, handle.job_id, sent, leave)))
        forging.start()
        try:
            assert sent.wait(WAIT)
            grid_server.wait(lambda s: s["counters"]["refused"] == 3)
            assert handle.result(WAIT) == b"real"
        finally:
            leave.set()
            forging.join(WAIT)
    counters = grid_server.status()["counters"]
    assert counters["done"] == 1 and counters["duplicates"] == 0 and grid_server.status()["held"]["jobs"] == 0


def test_start_worker_is_bounded(grid_server_factory) -> None:
    server: GridServer = grid_server_factory(GridLimits(max_spawned=1, heartbeat_interval=0.2, heartbeat_timeout=1.0))
    with server.controller() as ctl:
        begin = time.monotonic()
        with pytest.raises(RpcException) as huge:
            ctl.start_worker("'" * (1024 * 1024))  # the quadratic shlex input of old: refused before parsing
        assert huge.value.rc == ResultCode.ERROR_PARAM_INVALID and "exceeds 1024" in huge.value.message
        assert time.monotonic() - begin < WAIT
        ctl.start_worker(f"{server.endpoint} first echo 1")
        with pytest.raises(RpcException) as more:
            ctl.start_worker(f"{server.endpoint} second echo 1")
        assert more.value.rc == ResultCode.ERROR_RESOURCE_EXHAUSTED and "max_spawned=1" in more.value.message
        server.wait(lambda s: len(s["workers"]) == 1)


def test_shutdown_delay_is_validated(grid_server: GridServer) -> None:
    with grid_server.controller() as ctl:
        for delay in (math.inf, math.nan, -1.0, 1e9):
            with pytest.raises(RpcException) as info:
                ctl.shutdown(delay)
            assert info.value.rc == ResultCode.ERROR_PARAM_INVALID and "delay must be" in info.value.message
        assert ctl.shutdown(0.05).delay == pytest.approx(0.05)  # a later valid shutdown still works
    grid_server.wait(lambda s: s["closed"])


def test_payload_limit_follows_one_setting(grid_server_factory, spawn_worker) -> None:
    """8 MiB payloads (twice gRPC's default message size) pass when the server's limit says so."""
    server: GridServer = grid_server_factory(GridLimits(max_payload_bytes=16 * 1024 * 1024, heartbeat_interval=0.2,
                                                        heartbeat_timeout=1.0))
    spawn_worker("grid_handlers:big", server=server)
    payload = b"p" * (4 * 1024 * 1024 + 1)
    with server.client() as client:
        assert client.submit("echo", "1", payload).result(WAIT) == payload + payload
        with pytest.raises(RpcException) as info:
            client.submit("echo", "1", b"x" * (16 * 1024 * 1024 + 1))
        assert info.value.rc == ResultCode.ERROR_RESOURCE_EXHAUSTED and "max_payload_bytes" in info.value.message
    assert isinstance(client, GridClient)
