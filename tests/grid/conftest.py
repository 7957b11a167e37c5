"""Fixtures of the grid tests: an in-process grid server and real worker processes on loopback."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_helper import Access, AsyncRpcServer, certs
from grpc_helper.grid import Grid, GridClient, GridController, GridLimits, descriptors

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
#: Fast heartbeats so that hung workers are detected within a test's time.
FAST = GridLimits(heartbeat_interval=0.2, heartbeat_timeout=1.0, shutdown_delay=0.2)
WAIT = 20.0  # upper bound of every wait on a state (normally reached in milliseconds)


def poll(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Re-check ``predicate`` (a state, read through a public API) every 10 ms until it holds or ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)
    return True


#: Identities of the test TLS directory: "root" is the grid's admin.
ADMIN, ALICE, BOB, WORKER = "root", "alice", "bob", "worker"


def tls_options(tls_dir: Path | None, name: str) -> list[str]:
    """CLI options to speak as ``name`` (plaintext without a TLS directory)."""
    return ["--insecure"] if tls_dir is None else ["--tls-dir", str(tls_dir), "--name", name]


class GridServer:
    """An ``AsyncRpcServer`` hosting the grid on an event loop of its own thread (the test stays synchronous),
    over mTLS with the test TLS directory (plaintext when ``tls_dir`` is None)."""

    def __init__(
        self, limits: GridLimits = FAST, *, tls_dir: Path | None, server_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> None:
        self.tls_dir = tls_dir
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grid-test-server", daemon=True)
        self._thread.start()
        if tls_dir is None:
            options.setdefault("workers", Access.ANYONE)
        options.setdefault("worker_args", tls_options(tls_dir, "grid-worker"))
        self.descriptors = descriptors(limits=limits, **options)
        self.grid: Grid = self.descriptors[0].manager.grid
        kwargs: dict[str, Any] = {"host": "127.0.0.1", "options": limits.server_options()}
        if tls_dir is not None:
            kwargs.update(credentials=certs.server_credentials(tls_dir), admins={ADMIN})
        self.server = AsyncRpcServer(0, self.descriptors, **{**kwargs, **(server_kwargs or {})})
        self.call(self.server.start())
        self.endpoint = f"127.0.0.1:{self.server.port}"

    def credentials(self, name: str = ALICE) -> grpc.ChannelCredentials | None:
        return None if self.tls_dir is None else certs.channel_credentials(self.tls_dir, name)

    def client(self, name: str = ALICE, **kwargs: Any) -> GridClient:
        kwargs.setdefault("timeout", 10)
        return GridClient(self.endpoint, credentials=self.credentials(name), **kwargs)

    def controller(self, name: str = ADMIN) -> GridController:
        return GridController(self.endpoint, credentials=self.credentials(name), timeout=10)

    def cli(self, *args: str, name: str = ADMIN) -> subprocess.CompletedProcess[str]:
        """Run ``python -m grpc_helper.grid COMMAND --endpoint <this server> [TLS options of name] ARGS...``."""
        command, *rest = args
        argv = [sys.executable, "-m", "grpc_helper.grid", command, "--endpoint", self.endpoint,
                *tls_options(self.tls_dir, name), *rest]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=worker_env(), cwd=ROOT)

    def call(self, coro: Any, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def shutdown(self, grace: float | None = None) -> None:
        self.call(self.server.shutdown(grace))

    def close_grid(self) -> None:
        self.call(self.grid.close())

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(WAIT)
            self.loop.close()

    def status(self) -> dict[str, Any]:
        return self.grid.status()

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> None:
        assert poll(lambda: predicate(self.grid.status()), timeout), self.grid.status()

    def workers(self, service: str = "", version: str = "") -> list[dict[str, Any]]:
        return [
            w
            for w in self.grid.status()["workers"]
            if (not service or w["service_id"] == service) and (not version or w["service_version"] == version)
        ]


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TLS directory with the identities of the grid tests (``root`` is an admin of the test servers)."""
    directory = tmp_path_factory.mktemp("grid-tls") / "tls"
    certs.init(directory, clients=[ALICE, BOB, WORKER, "grid-worker"], admins=[ADMIN])
    return directory


@pytest.fixture
def grid_server_factory(tls_dir: Path) -> Iterator[Callable[..., GridServer]]:
    servers: list[GridServer] = []

    def make(limits: GridLimits = FAST, *, tls: bool = True, **options: Any) -> GridServer:
        server = GridServer(limits, tls_dir=tls_dir if tls else None, **options)
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def grid_server(grid_server_factory: Callable[..., GridServer]) -> GridServer:
    return grid_server_factory()


class GridProcess:
    """``python -m grpc_helper.grid serve --insecure`` in a process of its own: killed and restarted on its port."""

    tls_dir: Path | None = None

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "grpc_helper.grid", "serve", "--insecure", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(argv, env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "grid serving on HOST:PORT (...)"
        assert line.startswith("grid serving on "), line
        self.port = int(line.split()[3].rpartition(":")[2])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


#: Redis database of the test suite (each test keeps to a key prefix of its own, deleted at its end).
REDIS_DB = 13
REDIS_ADDRESS = ("127.0.0.1", 6379)


def _redis_missing() -> str:
    """Why the Redis tests can't run here ('' when they can)."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install grpc-helper[redis])"
    client = redis.Redis(*REDIS_ADDRESS, db=REDIS_DB, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"no Redis answers on {REDIS_ADDRESS[0]}:{REDIS_ADDRESS[1]} ({exc})"
    finally:
        client.close()
    return ""


def _delete_keys(prefixes: list[str]) -> None:
    import redis

    client = redis.Redis(*REDIS_ADDRESS, db=REDIS_DB)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def _redis_prefixes() -> Iterator[list[str]]:
    """The key prefixes this test process used: deleted once more at its end, when every server is stopped
    (a server stopping after its test's clean-up may have written a key again)."""
    prefixes: list[str] = []
    yield prefixes
    if prefixes:
        _delete_keys(prefixes)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, _redis_prefixes: list[str]) -> Iterator[str]:
    """A ``redis://`` URL of the suite's database with a key prefix of this test's own; skipped, saying why,
    without Redis. The test's keys are deleted at its end."""
    missing = _redis_missing()
    if missing:
        pytest.skip(f"Redis tests need Redis: {missing}")
    prefix = f"test-grid-{uuid.uuid4().hex[:12]}:"
    _redis_prefixes.append(prefix)
    yield f"redis://{REDIS_ADDRESS[0]}:{REDIS_ADDRESS[1]}/{REDIS_DB}?prefix={prefix}"
    _delete_keys([prefix])


def backend_option(name: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """``grid_server_factory`` options for a test parametrized over backends: ``memory`` or ``redis`` (the
    ``redis_url`` fixture: skipped without Redis)."""
    if name == "memory":
        return {}
    from grpc_helper.grid.backends import open_backend

    return {"backend": open_backend(request.getfixturevalue("redis_url"))}


@pytest.fixture
def grid_process() -> Iterator[GridProcess]:
    """A grid server process on the memory backend: a restart forgets every job."""
    server = GridProcess("--heartbeat", "0.2", "--backend", "memory")
    yield server
    server.stop()


@pytest.fixture
def durable_grid_process(tmp_path: Path) -> Iterator[GridProcess]:
    """A grid server process on the sqlite backend in a state directory of its own (kept across restarts)."""
    server = GridProcess("--heartbeat", "0.2", "--backend", "sqlite", "--state-dir", str(tmp_path / "grid-state"))
    yield server
    server.stop()


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
        server: GridServer | GridProcess | None = None,
        name: str = WORKER,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        server = server or grid_server
        argv = [sys.executable, "-m", "grpc_helper.grid", "worker", "--endpoint", server.endpoint,
                *tls_options(server.tls_dir, name)]
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
    with grid_server.client() as client:
        yield client


@pytest.fixture
def controller(grid_server: GridServer) -> Iterator[GridController]:
    with grid_server.controller() as ctl:
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
