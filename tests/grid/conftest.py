"""Fixtures of the grid tests: an in-process grid server and real worker processes on loopback."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from grpc_helper import RpcServer
from grpc_helper.grid import Grid, GridClient, GridController, GridLimits, descriptors

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
#: Fast heartbeats so that hung workers are detected within a test's time.
FAST = GridLimits(heartbeat_interval=0.2, heartbeat_timeout=1.0, shutdown_delay=0.2)
WAIT = 20.0  # upper bound of every wait on a state (normally reached in milliseconds)


@dataclass
class GridServer:
    server: RpcServer
    grid: Grid
    endpoint: str

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> None:
        assert self.grid.scheduler.wait_until(predicate, timeout), self.grid.status()

    def workers(self, service: str = "", version: str = "") -> list[dict[str, Any]]:
        return [
            w
            for w in self.grid.status()["workers"]
            if (not service or w["service_id"] == service) and (not version or w["service_version"] == version)
        ]


@pytest.fixture
def grid_server_factory(rpc_server_factory: Callable[..., RpcServer]) -> Callable[..., GridServer]:
    def make(limits: GridLimits = FAST, **options: Any) -> GridServer:
        descs = descriptors(limits=limits, **options)
        server = rpc_server_factory(descs)
        return GridServer(server, descs[0].manager.grid, f"127.0.0.1:{server.port}")

    return make


@pytest.fixture
def grid_server(grid_server_factory: Callable[..., GridServer]) -> GridServer:
    return grid_server_factory()


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(ROOT), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture
def spawn_worker(grid_server: GridServer) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m grpc_helper.grid worker`` processes; killed at teardown if still running."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        handler: str = "grid_handlers:echo",
        service: str = "echo",
        version: str = "1",
        *args: str,
        endpoint: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "grpc_helper.grid", "worker", "--endpoint", endpoint or grid_server.endpoint]
        argv += ["--service", service, "--version", version, *args, handler]
        proc = subprocess.Popen(argv, env={**worker_env(), **(env or {})}, cwd=ROOT, stdout=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def grid_client(grid_server: GridServer) -> Iterator[GridClient]:
    with GridClient(grid_server.endpoint, timeout=10) as client:
        yield client


@pytest.fixture
def controller(grid_server: GridServer) -> Iterator[GridController]:
    with GridController(grid_server.endpoint, timeout=10) as ctl:
        yield ctl


class JobStarted:
    """A FIFO the ``signalled_slow`` handler writes to when a job starts: wait on it, no sleeping."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "started.fifo"
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer end: without it the FIFO reads as EOF (always "readable") once a handler closed it.
        self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self.env = {"GRID_TEST_FIFO": str(self.path)}

    def wait(self, timeout: float = WAIT) -> None:
        readable, _, _ = select.select([self._fd], [], [], timeout)
        assert readable and os.read(self._fd, 1), "no job started"

    def close(self) -> None:
        os.close(self._keep)
        os.close(self._fd)


@pytest.fixture
def job_started(tmp_path: Path) -> Iterator[JobStarted]:
    started = JobStarted(tmp_path)
    yield started
    started.close()
