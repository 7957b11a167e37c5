"""Fixtures for the job runner tests: one TLS directory per session, a jobs server (asyncio) per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sample_async import LoopThread

from grpc_helper import AsyncRpcServer, RpcClient
from grpc_helper import certs as tls
from grpc_helper.jobs import descriptor
from grpc_helper.jobs.manager import JobsManager

from .jobs_helpers import STUBS


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, server cert and clients alice, bob (users) and root (admin); plus a foreign CA with a client."""
    d = tmp_path_factory.mktemp("tls")
    tls.init(d, ["alice", "bob"], ["root"])
    tls.init(d / "other", ["alice"])
    return d


class JobsServer:
    """An ``AsyncRpcServer`` hosting the jobs service on a loop thread, driven from synchronous tests."""

    def __init__(self, runner: LoopThread, server: AsyncRpcServer) -> None:
        self.aio = server
        self.runner = runner
        runner.run(server.start())

    @property
    def port(self) -> int:
        return self.aio.port

    @property
    def manager(self) -> JobsManager:
        manager: JobsManager = self.aio.descriptors[1].manager
        return manager

    def shutdown(self, grace: float | None = None) -> None:
        self.runner.run(self.aio.shutdown(grace))


@dataclass
class JobsEnv:
    server: JobsServer
    state_dir: Path
    tls_dir: Path
    client: Callable[..., RpcClient]
    restart: Callable[..., JobsEnv]

    def jobs(self, name: str = "alice", **kwargs: Any) -> Any:
        return self.client(name, **kwargs).jobs


@pytest.fixture
def jobs_loop() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture
def jobs_server(jobs_loop: LoopThread, tls_dir: Path, rpc_dump_folder: Path) -> Iterator[Callable[..., JobsServer]]:
    """``jobs_server(state_dir, **JobsManager options)``: a started server over mTLS on 127.0.0.1:0."""
    servers: list[JobsServer] = []

    def make(
        state_dir: Path, *, plaintext: bool = False, server_options: dict[str, Any] | None = None, **options: Any
    ) -> JobsServer:
        options.setdefault("stop_grace", 2.0)
        credentials = {} if plaintext else {
            "credentials": tls.server_credentials(tls_dir), "client_credentials": tls.channel_credentials(tls_dir, "root")
        }
        aio = AsyncRpcServer(
            0, [descriptor(state_dir, **options)], host="127.0.0.1", dump_folder=rpc_dump_folder, admins=["root"],
            **credentials, **(server_options or {}),
        )
        server = JobsServer(jobs_loop, aio)
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.shutdown()


@pytest.fixture
def jobs_env(
    tmp_path: Path, tls_dir: Path, jobs_server: Callable[..., JobsServer], rpc_client_factory: Callable[..., RpcClient]
) -> Iterator[Callable[..., JobsEnv]]:
    """``jobs_env(**JobsManager options)``: a jobs server over mTLS on 127.0.0.1:0 with a per-test state dir."""
    state_dir = tmp_path / "state"

    def make(**options: Any) -> JobsEnv:
        server = jobs_server(state_dir, **options)

        def client(name: str = "alice", credentials: grpc.ChannelCredentials | None = None, **kwargs: Any) -> RpcClient:
            kwargs.setdefault("timeout", 10)
            creds = credentials or tls.channel_credentials(tls_dir, name)
            return rpc_client_factory(server, stubs=STUBS, host="127.0.0.1", credentials=creds, **kwargs)

        def restart(**new_options: Any) -> JobsEnv:
            server.shutdown()
            return make(**(new_options or options))

        return JobsEnv(server, state_dir, tls_dir, client, restart)

    yield make


@pytest.fixture
def job_dir() -> Iterator[Path]:
    """A directory every job can use whatever user it runs as (tmp_path is private to the tests' user)."""
    d = Path(tempfile.mkdtemp(prefix="grpc-helper-job-"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)
