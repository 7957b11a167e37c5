"""Nothing lost: killed workers, handler errors, stop, Ctrl+C, missed heartbeats."""

from __future__ import annotations

import signal
import subprocess

import pytest

from grpc_helper import ResultCode
from grpc_helper.grid import GridClient, GridController, GridLimits, JobError

from .conftest import FAST, WAIT, GridServer, backend_option


@pytest.fixture(params=["memory", "redis"])
def grid_server(request: pytest.FixtureRequest, grid_server_factory) -> GridServer:
    """Each test of this module on the memory backend and on a shared Redis queue (skipped without Redis)."""
    server: GridServer = grid_server_factory(**backend_option(request.param, request))
    return server


def test_worker_killed_mid_job_completes_elsewhere(grid_server: GridServer, spawn_worker, grid_client: GridClient) -> None:
    doomed = spawn_worker("grid_handlers:hang")
    handle = grid_client.submit("echo", "1", b"survivor")
    grid_server.wait(lambda s: [w["running"] for w in s["workers"]] == [1])
    doomed.send_signal(signal.SIGKILL)
    grid_server.wait(lambda s: not s["workers"] and s["counters"]["requeued"] == 1)
    spawn_worker("grid_handlers:echo")
    assert handle.result(WAIT) == b"survivor"
    result = grid_client.get_result(handle.job_id)
    assert result.attempts == 2
    assert grid_server.grid.status()["counters"]["workers_lost"] == 1


def test_hung_worker_dropped_on_missed_heartbeats(grid_server: GridServer, spawn_worker, grid_client: GridClient) -> None:
    frozen = spawn_worker("grid_handlers:hang")
    handle = grid_client.submit("echo", "1", b"x")
    grid_server.wait(lambda s: [w["in_flight"] for w in s["workers"]] == [1])
    frozen.send_signal(signal.SIGSTOP)  # alive socket, no heartbeat
    try:
        grid_server.wait(lambda s: not s["workers"], timeout=FAST.heartbeat_timeout * 10)
        spawn_worker("grid_handlers:echo")
        assert handle.result(WAIT) == b"x"
    finally:
        frozen.send_signal(signal.SIGKILL)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_handler_error_reaches_client_after_retries(backend: str, request, grid_server_factory, spawn_worker) -> None:
    server = grid_server_factory(
        GridLimits(max_retries=2, heartbeat_interval=0.2, heartbeat_timeout=1.0), **backend_option(backend, request)
    )
    spawn_worker("grid_handlers:fail", server=server)
    with server.client() as client:
        handle = client.submit("echo", "1", b"bad")
        with pytest.raises(JobError) as info:
            handle.result(WAIT)
    assert info.value.rc == ResultCode.ERROR_CUSTOM
    assert info.value.attempts == 3
    assert "ValueError: cannot handle b'bad'" in info.value.message
    assert server.grid.status()["counters"]["retried"] == 2


def test_stop_worker(
    grid_server: GridServer, spawn_worker, grid_client: GridClient, controller: GridController, job_started
) -> None:
    proc = spawn_worker("grid_handlers:signalled_slow", "echo", "1", "--prefetch", "4", env=job_started.env)
    handles = grid_client.submit_batch("echo", "1", [b"%d" % i for i in range(5)])
    job_started.wait()
    [worker] = grid_server.workers()
    assert controller.stop_worker(worker["id"]) == {"worker_id": worker["id"], "state": "stopping"}
    assert proc.wait(WAIT) == 0
    grid_server.wait(lambda s: not s["workers"])
    done = [h for h in handles if h.done()]
    assert 1 <= len(done) < 5  # the running job finished, the prefetched ones went back to the queue
    status = grid_server.grid.status()
    assert status["queues"][0]["depth"] == 5 - len(done)
    assert status["counters"]["workers_lost"] == 0 and status["counters"]["requeued"] == 0
    spawn_worker("grid_handlers:echo")
    assert [h.result(WAIT) for h in handles] == [b"%d" % i for i in range(5)]
    with pytest.raises(Exception, match="unknown worker"):
        controller.stop_worker(worker["id"])


def test_ctrl_c_drains_then_second_exits_at_once(
    grid_server: GridServer, spawn_worker, grid_client: GridClient, job_started
) -> None:
    proc = spawn_worker("grid_handlers:signalled_slow", "echo", "1", "--prefetch", "4", env=job_started.env)
    handles = grid_client.submit_batch("echo", "1", [b"%d" % i for i in range(5)])
    job_started.wait()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT) == 0
    grid_server.wait(lambda s: not s["workers"])
    assert 1 <= sum(h.done() for h in handles) < 5

    hung = spawn_worker("grid_handlers:signalled_hang", env=job_started.env)
    job_started.wait()
    hung.send_signal(signal.SIGINT)  # drains: waits for the hung job...
    grid_server.wait(lambda s: [w["state"] for w in s["workers"]] == ["stopping"])
    with pytest.raises(subprocess.TimeoutExpired):
        hung.wait(0.3)
    hung.send_signal(signal.SIGINT)  # ...a second Ctrl+C leaves at once
    assert hung.wait(WAIT) == 130
    grid_server.wait(lambda s: not s["workers"])
    spawn_worker("grid_handlers:echo")
    assert [h.result(WAIT) for h in handles] == [b"%d" % i for i in range(5)]
