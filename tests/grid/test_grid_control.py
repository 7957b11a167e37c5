"""Controller: start_worker (spawned workers are stopped at shutdown), shutdown delivers its response."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from grpc_helper import ResultCode, RpcException, certs
from grpc_helper.grid import GridController, JobError

from .conftest import FAST, WAIT, GridServer


def test_start_worker_and_stop_spawned_at_shutdown(grid_server_factory) -> None:
    server: GridServer = grid_server_factory(FAST, handlers={"upper": "grid_handlers:upper"})
    with server.controller() as ctl, server.client() as client:
        with pytest.raises(RpcException) as info:
            ctl.start_worker("only two")
        assert info.value.rc == ResultCode.ERROR_PARAM_INVALID
        started = ctl.start_worker(f"{server.endpoint} 'spawned echo' echo 1")
        assert started.handler == "grpc_helper.grid.handlers:echo"
        server.wait(lambda s: [w["description"] for w in s["workers"]] == ["spawned echo"])
        assert client.submit("echo", "1", b"hi").result(WAIT) == b"hi"
        assert ctl.status()["spawned"][0]["pid"] == started.pid
    proc = psutil.Process(started.pid)
    # The documented order: close the grid (workers get STOP and drain), then stop the server.
    server.close_grid()
    server.shutdown()
    assert not proc.is_running()  # the manager owns the spawned worker: stopped and reaped
    assert [p["returncode"] for p in server.grid.spawner.status()] == [0]


def test_server_shutdown_alone_stops_spawned_workers(grid_server: GridServer, controller: GridController) -> None:
    started = controller.start_worker(f"{grid_server.endpoint} spawned echo 1")
    grid_server.wait(lambda s: len(s["workers"]) == 1)
    proc = psutil.Process(started.pid)
    grid_server.shutdown()
    assert not proc.is_running()
    # begin_shutdown told the worker to stop while its stream was open: it drained and exited cleanly.
    assert [p["returncode"] for p in grid_server.grid.spawner.status()] == [0]


def test_shutdown_delivers_response_and_fails_pending_jobs(grid_server_factory, spawn_worker) -> None:
    stopped = threading.Event()
    server: GridServer = grid_server_factory(FAST, on_shutdown=stopped.set)
    worker = spawn_worker(server=server)
    with server.controller() as ctl, server.client() as client:
        assert client.submit("echo", "1", b"done").result(WAIT) == b"done"
        waiting = client.submit("echo", "99", b"nobody serves version 99")
        response = ctl.shutdown(delay=0.2)
        assert response.delay == pytest.approx(0.2) and response.jobs_pending == 1
        assert stopped.wait(WAIT)
        with pytest.raises(JobError) as info:
            waiting.result(WAIT)
        assert info.value.rc == ResultCode.ERROR_STREAM_SHUTDOWN
        with pytest.raises(RpcException) as refused:
            client.submit("echo", "1", b"late")
        assert refused.value.rc == ResultCode.ERROR_STREAM_SHUTDOWN
        assert refused.value.status.name == "UNAVAILABLE"
    assert worker.wait(WAIT) == 0  # told to stop: drained and left cleanly


def test_cli_shutdown_of_standalone_server(tmp_path: Path) -> None:
    """`grid serve` speaks mTLS by default; the shutdown command needs an admin certificate."""
    certs.init(tmp_path, clients=["alice"], admins=["root"])
    serve = subprocess.Popen(
        [sys.executable, "-m", "grpc_helper.grid", "serve", "--port", "0", "--tls-dir", str(tmp_path),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        assert f"(mTLS, admins: root, backend sqlite in {tmp_path / 'state'})" in line
        endpoint = line.split()[3]
        plain = grid_cli("status", "--insecure", "--timeout", "2", "--endpoint", endpoint)
        assert plain.returncode != 0 and plain.stderr.startswith("error: ")
        out = grid_cli("shutdown", "--endpoint", endpoint, "--tls-dir", str(tmp_path), "--name", "root")
        assert out.returncode == 0 and "shutting down in 0.5s" in out.stdout, out.stderr
        assert serve.wait(WAIT) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def grid_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grpc_helper.grid", *args], capture_output=True, text=True, timeout=WAIT)
