"""Failover on a shared backend: two grid server processes on one Redis, a client and workers given both
endpoints; one server SIGKILLed mid-batch: the client and the workers carry on with the other, and every job
resolves once with its result (none reported unknown: the other server shares the queue and the session).

Skipped, saying why, where no Redis answers on 127.0.0.1:6379 (the ``redis_url`` fixture).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from grpc_helper import RpcClient
from grpc_helper.grid import GridClient
from grpc_helper.grid._session import API_VERSION
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.backends import open_backend

from .conftest import FAST, ROOT, WAIT, GridProcess, GridServer, poll, worker_env

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def processes(redis_url: str) -> Iterator[Callable[..., GridProcess]]:
    started: list[GridProcess] = []

    def make(*args: str) -> GridProcess:
        server = GridProcess("--heartbeat", "0.2", "--backend", redis_url, "--lease-ttl", "1", *args)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def test_server_sigkilled_mid_batch_client_and_workers_carry_on(processes: Callable[..., GridProcess]) -> None:
    a, b = processes(), processes()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "grpc_helper.grid", "worker", "--insecure", "--endpoint", endpoints,
             "--service", "echo", "--version", "1", "--concurrency", "8", "grid_handlers:slow"],
            env=worker_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for endpoints in (f"{a.endpoint},{b.endpoint}", f"{b.endpoint},{a.endpoint}")  # one worker on each first
    ]
    try:
        payloads = [b"job-%d" % i for i in range(80)]  # 0.3 s each, 16 at a time: ~1.5 s of work
        with GridClient([a.endpoint, b.endpoint], timeout=30) as client:
            handles = client.submit_batch("echo", "1", payloads)
            assert client.endpoint == a.endpoint
            done = GridClient.as_completed(handles, timeout=WAIT)
            for _ in range(10):
                next(done)  # some results arrived through A: the batch is under way
            a.kill()
            results = [h.result(WAIT) for h in handles]  # no JobError: nothing unknown, nothing lost
            assert results == payloads
            assert client.endpoint == b.endpoint
            # New jobs complete on B; both worker processes are alive (the one that began with A moved to B).
            assert [h.result(WAIT) for h in client.submit_batch("echo", "1", [b"after"] * 20)] == [b"after"] * 20
        assert all(w.poll() is None for w in workers)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
            worker.wait(WAIT)


def test_a_moved_session_keeps_the_jobs_this_server_runs(
    redis_url: str, grid_server_factory: Callable[..., GridServer], spawn_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """Jobs submitted on A, leased by B's worker; the client's results stream then opens on B with their ids
    (what a failover does). B knows them: none may be reported unknown (B held them for its worker, outside any
    session of its own, before the session arrived)."""
    a = grid_server_factory(FAST, tls=False, backend=open_backend(redis_url))
    b = grid_server_factory(FAST, tls=False, backend=open_backend(redis_url))
    spawn_worker("grid_handlers:hang", server=b)
    host, _, port = b.endpoint.rpartition(":")
    with a.client(session="moving") as client:  # open till the end: closing it would end the session
        ids = [h.job_id for h in client.submit_batch("echo", "1", [b"x", b"y"])]
        assert poll(lambda: sum(w["in_flight"] for w in b.workers()) == 2)  # both leased by B's worker
        with RpcClient(host, int(port), {"grid": (pb_grpc.GridClientServiceStub, API_VERSION)}, timeout=WAIT) as rpc:
            stream = rpc.grid.results(pb.ResultsRequest(session="moving", waiting=ids), timeout=WAIT)
            first = next(iter(stream))  # the first message lists the waiting jobs B does not know
            stream.cancel()
    assert [r.job_id for r in first.results] == []
