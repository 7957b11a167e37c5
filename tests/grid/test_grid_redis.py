"""The Redis backend: several grid servers share one queue in Redis Streams (real Redis, real processes).

Skipped, saying why, where no Redis answers on 127.0.0.1:6379 (``.ci/run`` starts one when it can).
"""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from grpc_helper import ResultCode, RpcException
from grpc_helper.grid import GridClient, GridLimits, JobError
from grpc_helper.grid.backends import BackendUnavailable, RedisBackend, open_backend

from .conftest import FAST, ROOT, WAIT, GridProcess, GridServer, JobStarted, poll, worker_env


@pytest.fixture
def shared(redis_url: str, grid_server_factory: Callable[..., GridServer]) -> Callable[..., GridServer]:
    """In-process grid servers (plaintext) on one Redis queue."""

    def make(limits: GridLimits = FAST) -> GridServer:
        return grid_server_factory(limits, tls=False, backend=open_backend(redis_url))

    return make


@pytest.fixture
def processes(redis_url: str) -> Iterator[Callable[..., GridProcess]]:
    """``grid serve --backend redis://...`` processes on one Redis queue."""
    started: list[GridProcess] = []

    def make(*args: str) -> GridProcess:
        server = GridProcess("--heartbeat", "0.2", "--backend", redis_url, *args)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def test_a_worker_on_one_server_serves_a_client_of_another(shared, spawn_worker) -> None:
    a, b = shared(), shared()
    spawn_worker(server=b)
    with a.client() as client:
        handles = client.submit_batch("echo", "1", [b"job-%d" % i for i in range(300)])
        assert [h.result(WAIT) for h in handles] == [b"job-%d" % i for i in range(300)]
    status = a.status()
    assert status["backend"]["name"] == "redis" and status["backend"]["durable"]
    grid = a.call(a.grid.grid_status())  # what the controller's status shows under "grid"
    assert {s["server"] for s in grid["servers"]} == {a.grid.backend.status()["server"], b.grid.backend.status()["server"]}
    assert [(q["service_id"], q["queued"], q["leased"]) for q in grid["queues"]] == [("echo", 0, 0)]
    assert a.workers() == [] and [w["jobs_done"] for w in b.workers()] == [300]  # B's worker ran them


def test_jobs_go_to_the_server_whose_workers_have_room(shared, spawn_worker) -> None:
    a, b = shared(), shared()
    spawn_worker(server=a)
    spawn_worker(server=b)
    a.wait(lambda s: len(s["workers"]) == 1)
    b.wait(lambda s: len(s["workers"]) == 1)
    with a.client() as client:
        assert list(client.map("echo", "1", [b"%d" % i for i in range(2000)])) == [b"%d" % i for i in range(2000)]
    (done_a,), (done_b,) = [w["jobs_done"] for w in a.workers()], [w["jobs_done"] for w in b.workers()]
    assert done_a + done_b == 2000 and done_a > 0 and done_b > 0


def test_a_session_moves_with_its_client(shared, spawn_worker) -> None:
    """Jobs submitted on A, then the client's session reopened on B: B delivers their results."""
    a, b = shared(), shared()
    with a.client(session="moving") as first:
        handles = first.submit_batch("later", "1", [b"a", b"b", b"c"])
        ids = [h.job_id for h in handles]
        with b.client(session="moving") as second:  # the same session opens its results stream on B
            last = second.submit("later", "1", b"d")
            assert poll(lambda: b.status()["sessions"]["streaming"] == 1)
            spawn_worker("grid_handlers:echo", "later", "1", server=b)
            assert last.result(WAIT) == b"d"
            assert poll(lambda: all(second.get_result(i).state == 3 for i in ids))  # JOB_DONE
            assert [second.get_result(i).data for i in ids] == [b"a", b"b", b"c"]
        # A is no longer the session's home: its client hears nothing of results it cannot deliver.
        assert not any(h.done() for h in handles)


def test_another_identity_cannot_take_a_session(redis_url: str, grid_server_factory, spawn_worker) -> None:
    a = grid_server_factory(FAST, backend=open_backend(redis_url))
    b = grid_server_factory(FAST, backend=open_backend(redis_url))
    with a.client("alice", session="alices") as alice:
        alice.submit_batch("nobody", "1", [b"secret"])
        with pytest.raises(RpcException) as info, b.client("bob", session="alices") as bob:
            bob.submit("nobody", "1", b"x").result(WAIT)  # bob's results stream for alice's session is refused
        assert alice.get_result(alice.submit("nobody", "1", b"y").job_id).state == 1  # alice's session is intact
        with a.controller() as ctl:  # any server's status shows the whole grid
            grid = ctl.status()["grid"]
        assert len(grid["servers"]) == 2 and [q["service_id"] for q in grid["queues"]] == ["nobody"]
        printed = a.cli("status").stdout  # and so does the CLI
        assert "backend: redis (redis://127.0.0.1:6379/13" in printed and "grid: 2 server(s)" in printed
        assert "nobody/1: queued=" in printed
    assert info.value.rc == ResultCode.ERROR_ITEM_UNKNOWN and "unknown session" in info.value.message


def test_server_sigkilled_its_jobs_run_on_another(
    processes, spawn_worker, job_started: JobStarted, redis_url: str
) -> None:
    """A server dies holding a running job: after the lease time another server's worker runs it, once."""
    a = processes("--lease-ttl", "1")
    b = processes("--lease-ttl", "1")
    spawn_worker("grid_handlers:signalled_slow", server=a, env=job_started.env)
    with GridClient(b.endpoint, timeout=WAIT) as client:
        handle = client.submit("echo", "1", b"survivor")
        job_started.wait()  # running on A's worker
        a.kill()
        spawn_worker(server=b)
        assert handle.result(WAIT) == b"survivor"
        assert client.get_result(handle.job_id).attempts >= 1
    assert b.proc is not None
    pid = b.proc.pid
    observer = RedisBackend(redis_url)  # reads the grid's status as any server of it does
    try:
        # A drops out of the grid's status once its registration is stale.
        assert poll(lambda: [s["pid"] for s in observer.grid_status()["servers"]] == [pid])
        assert observer.grid_status()["servers"][0]["counters"]["done"] == 1
    finally:
        observer.close()


def test_graceful_stop_hands_jobs_back_at_once(shared, spawn_worker, job_started: JobStarted) -> None:
    limits = GridLimits(heartbeat_interval=0.2, heartbeat_timeout=1.0, shutdown_delay=0.2, lease_ttl=600)
    a, b = shared(limits), shared(limits)
    spawn_worker("grid_handlers:signalled_slow", server=a, env=job_started.env)
    a.wait(lambda s: len(s["workers"]) == 1)
    with b.client() as client:
        handle = client.submit("echo", "1", b"handed back")
        job_started.wait()
        a.stop()  # its worker is told to stop; the job it held goes back to the queue (no 600 s lease wait)
        spawn_worker(server=b)
        assert handle.result(WAIT) == b"handed back"


def test_backend_unavailable_is_one_line_error() -> None:
    with pytest.raises(BackendUnavailable) as info:
        RedisBackend("redis://:secret@127.0.0.1:1/0")
    assert "does not answer" in str(info.value) and "\n" not in str(info.value)
    assert "secret" not in str(info.value)  # the URL is quoted without its password
    serve = subprocess.run(
        [sys.executable, "-m", "grpc_helper.grid", "serve", "--insecure", "--port", "0", "--backend",
         "redis://127.0.0.1:1/0"],
        capture_output=True, text=True, timeout=WAIT, env=worker_env(), cwd=ROOT,
    )
    assert serve.returncode == 3
    assert serve.stderr.strip().startswith("error: Redis at redis://127.0.0.1:1/0 does not answer")
    assert "Traceback" not in serve.stderr


def test_chaos_two_servers_one_redis(processes, spawn_worker) -> None:
    """3,000 jobs from two clients (one per server) and four workers spread over two servers; server A is
    SIGKILLed twice mid-run (and restarted on its port), workers are SIGKILLed too: every result arrives exactly
    once, none is reported unknown, none resubmitted."""
    rng = random.Random(10)
    servers = [processes("--lease-ttl", "1"), processes("--lease-ttl", "1")]
    workers = [spawn_worker("grid_handlers:tick", "chaos", "1", server=servers[i % 2]) for i in range(4)]
    jobs = 3000
    payloads = [b"job-%05d" % i for i in range(jobs)]
    done: queue.Queue[tuple[int, Future[bytes]]] = queue.Queue()
    results: dict[int, bytes] = {}
    worker_kills = server_kills = 0
    with GridClient(servers[0].endpoint, timeout=WAIT) as on_a, GridClient(servers[1].endpoint, timeout=WAIT) as on_b:
        for client, indexes in ((on_a, range(0, jobs, 2)), (on_b, range(1, jobs, 2))):
            handles = client.submit_batch("chaos", "1", [payloads[i] for i in indexes])
            for i, handle in zip(indexes, handles, strict=True):
                handle.future.add_done_callback(lambda f, i=i: done.put((i, f)))
        next_kill = 150
        while len(results) < jobs:
            index, future = done.get(timeout=WAIT)
            assert future.exception() is None, f"job {index}: {future.exception()}"
            assert index not in results, f"job {index} resolved twice"
            results[index] = future.result()
            if len(results) >= next_kill and next_kill < jobs:
                next_kill += 150
                if next_kill in (900, 2100):
                    servers[0].kill()
                    servers[0].start()
                    server_kills += 1
                else:
                    victim = workers.pop(rng.randrange(len(workers)))
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(WAIT)
                    worker_kills += 1
                    workers.append(spawn_worker("grid_handlers:tick", "chaos", "1", server=servers[worker_kills % 2]))
    assert [results[i] for i in range(jobs)] == payloads
    assert server_kills == 2 and worker_kills >= 10


def test_long_lost_servers_are_forgotten(redis_url: str, shared) -> None:
    """A server that crashed an hour ago leaves a registration and an inbox: the live servers delete them."""
    import redis

    observer = RedisBackend(redis_url)  # for its key names only
    client = redis.Redis.from_url("redis://127.0.0.1:6379/13")
    try:
        layout = observer.layout
        client.hset(layout.servers, "ghost:1:dead", json.dumps({"ts": time.time() - 7200, "pid": 1}))
        client.xadd(layout.inbox("ghost:1:dead"), {"id": "1", "s": "gone"})
        server = shared()
        assert poll(lambda: not client.hexists(layout.servers, "ghost:1:dead"))
        assert not client.exists(layout.inbox("ghost:1:dead"))
        assert client.hexists(layout.servers, server.grid.backend.status()["server"])  # the live one stays
    finally:
        client.close()
        observer.close()


def test_identity_quota_holds_across_the_grid(redis_url: str, grid_server_factory) -> None:
    """max_identity_jobs counts an identity's jobs on every server: past it, jobs submitted on another server
    come back failed with RESOURCE_EXHAUSTED at once; so do those of a session past max_identity_sessions (which
    bounds the work of that count: a flood of sessions can't make every submit slow for everyone)."""
    limits = GridLimits(max_identity_jobs=5, max_identity_sessions=2, heartbeat_interval=0.2, heartbeat_timeout=1.0)
    a = grid_server_factory(limits, backend=open_backend(redis_url))
    b = grid_server_factory(limits, backend=open_backend(redis_url))
    with a.client("alice") as on_a, b.client("alice") as on_b, b.client("bob") as bob:
        on_a.submit_batch("nobody", "1", [b"a"] * 4)  # held on A (no worker)
        over = on_b.submit_batch("nobody", "1", [b"b"] * 2)  # B holds none of alice's jobs itself
        for handle in over:
            with pytest.raises(JobError) as info:
                handle.result(WAIT)
            assert info.value.rc == ResultCode.ERROR_RESOURCE_EXHAUSTED
            assert "identity quota: 'alice' holds 4 jobs on the grid" in info.value.message
        assert on_b.get_result(on_b.submit("nobody", "1", b"fits").job_id).state == 1  # 4 + 1: queued
        assert bob.get_result(bob.submit_batch("nobody", "1", [b"x"] * 5)[0].job_id).state == 1  # bob's own quota
        # A third session of alice's holding jobs: past max_identity_sessions.
        with b.client("alice") as third, pytest.raises(JobError) as many:
            third.submit("nobody", "1", b"c").result(WAIT)
        assert many.value.rc == ResultCode.ERROR_RESOURCE_EXHAUSTED
        assert "'alice' has 2 sessions holding jobs on the grid" in many.value.message


def test_a_job_whose_servers_keep_dying_fails(processes, spawn_worker, job_started: JobStarted) -> None:
    """A job running when its server is SIGKILLed is taken over elsewhere; the ``max_lost``-th (3rd) such loss
    fails it, naming the cause, instead of taking server after server down with it."""
    a, b = processes("--lease-ttl", "1"), processes("--lease-ttl", "1")
    home = processes("--lease-ttl", "1")  # holds the client's session; no worker: takes no job
    with GridClient(home.endpoint, timeout=WAIT) as client:
        handle = client.submit("echo", "1", b"deadly")
        for server in (a, b, a):  # the job starts on a worker of `server`, then the server dies with it
            worker = spawn_worker("grid_handlers:signalled_hang", server=server, env=job_started.env)
            job_started.wait()
            server.kill()
            worker.send_signal(signal.SIGKILL)
            worker.wait(WAIT)
            server.start()
        spawn_worker("grid_handlers:echo", server=b)  # b takes the job over: its 3rd lost server
        with pytest.raises(JobError) as info:
            handle.result(WAIT)
    assert info.value.rc == ResultCode.ERROR_RPC
    assert "the grid servers holding it were lost 3 times" in info.value.message
