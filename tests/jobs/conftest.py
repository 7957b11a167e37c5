"""Fixtures for the job runner tests: one TLS directory per session, a jobs server per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_helper import RpcClient, RpcServer
from grpc_helper import certs as tls
from grpc_helper.jobs import descriptor

from .jobs_helpers import STUBS


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, server cert and clients alice, bob (users) and root (admin); plus a foreign CA with a client."""
    d = tmp_path_factory.mktemp("tls")
    tls.init(d, ["alice", "bob"], ["root"])
    tls.init(d / "other", ["alice"])
    return d


@dataclass
class JobsEnv:
    server: RpcServer
    state_dir: Path
    tls_dir: Path
    client: Callable[..., RpcClient]
    restart: Callable[..., JobsEnv]

    def jobs(self, name: str = "alice", **kwargs: Any) -> Any:
        return self.client(name, **kwargs).jobs


@pytest.fixture
def jobs_env(
    tmp_path: Path, tls_dir: Path, rpc_server_factory: Callable[..., RpcServer], rpc_client_factory: Callable[..., RpcClient]
) -> Iterator[Callable[..., JobsEnv]]:
    """``jobs_env(**JobsManager options)``: a jobs server over mTLS on 127.0.0.1:0 with a per-test state dir."""
    state_dir = tmp_path / "state"

    def make(**options: Any) -> JobsEnv:
        options.setdefault("stop_grace", 2.0)
        server = rpc_server_factory(
            [descriptor(state_dir, ["root"], **options)],
            credentials=tls.server_credentials(tls_dir),
            client_credentials=tls.channel_credentials(tls_dir, "root"),
            max_workers=options.pop("max_workers", 64) if "max_workers" in options else 64,
        )

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
