"""Clients, workers, the controller and the CLI given several grid servers fail over to the next one.

Two real grid server processes that share nothing (memory backend each): what is tested is the failover of
the client side. A is SIGKILLed under a live client and a live worker given [A, B]: both carry on with B, new
jobs complete there, and the client's old jobs that B does not know are reported ERROR_ITEM_UNKNOWN. A submit
whose connection breaks after it left is raised, not re-sent to B. Every wait is on a state.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from grpc_helper import ResultCode, RpcException
from grpc_helper._cli.exits import ExitCode
from grpc_helper.grid import AsyncGridClient, GridClient, GridController, JobError
from grpc_helper.grid._session import Next, failover
from grpc_helper.grid.api import grid_pb2 as pb

from .conftest import ADMIN, ROOT, WAIT, GridProcess, GridServer, worker_env

pytestmark = pytest.mark.timeout(120)

Servers = tuple[GridProcess, GridProcess]
StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def two_servers() -> Iterator[Servers]:
    servers = (GridProcess("--heartbeat", "0.2", "--backend", "memory"), GridProcess("--heartbeat", "0.2", "--backend", "memory"))
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*endpoint_args: str, service: str = "echo") -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "grpc_helper.grid", "worker", "--insecure", *endpoint_args,
                "--service", service, "--version", "1", "grid_handlers:echo"]
        proc = subprocess.Popen(argv, env=worker_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)


def _free_port() -> int:
    """A port nothing listens on (bound then released: connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_and_worker_carry_on_with_b_when_a_is_sigkilled(
    two_servers: Servers, start_worker: StartWorker
) -> None:
    a, b = two_servers
    worker = start_worker("--endpoint", a.endpoint, "--endpoint", b.endpoint)  # the option repeated
    with GridClient([a.endpoint, b.endpoint], timeout=30) as client:
        assert client.endpoint == a.endpoint
        # Done on A: the worker registered with A (the first endpoint).
        assert list(client.map("echo", "1", [b"a%d" % i for i in range(50)], timeout=WAIT)) == [b"a%d" % i for i in range(50)]
        held = client.submit_batch("nobody", "1", [b"x", b"y"])  # no worker serves it: waiting on A
        a.kill()

        # The results stream moved to B with the waiting ids: B does not know them.
        for handle in held:
            with pytest.raises(JobError) as failed:
                handle.result(WAIT)
            assert failed.value.rc == ResultCode.ERROR_ITEM_UNKNOWN and "resubmit" in failed.value.message
        assert client.endpoint == b.endpoint
        # New jobs complete on B: the worker (the same process) registered again, with B.
        assert list(client.map("echo", "1", [b"b%d" % i for i in range(50)], timeout=WAIT)) == [b"b%d" % i for i in range(50)]
        assert worker.poll() is None and client.endpoint == b.endpoint


def test_idle_client_submits_to_b_when_a_is_down(
    two_servers: Servers, start_worker: StartWorker
) -> None:
    """Nothing pending (no results stream open): the next submit finds A refusing connections and goes to B
    (it provably never reached A)."""
    a, b = two_servers
    start_worker("--endpoint", f"{a.endpoint},{b.endpoint}")  # comma-separated
    with GridClient(f"{a.endpoint},{b.endpoint}", timeout=30) as client:
        assert client.submit("echo", "1", b"first").result(WAIT) == b"first"
        a.kill()
        assert client.submit("echo", "1", b"second").result(WAIT) == b"second"
        assert client.endpoint == b.endpoint
        assert client.get_result(client.submit("echo", "1", b"third").job_id).job_id > 0


def test_first_endpoint_never_up(two_servers: Servers, start_worker: StartWorker) -> None:
    _, b = two_servers
    dead = f"127.0.0.1:{_free_port()}"
    start_worker("--endpoint", f"{dead},{b.endpoint}")
    with GridClient([dead, b.endpoint], timeout=30) as client:
        assert client.submit("echo", "1", b"x").result(WAIT) == b"x"
        assert client.endpoint == b.endpoint


def test_controller_fails_over(grid_server: GridServer, tls_dir: Path) -> None:
    """``status`` needs an authenticated caller: an mTLS server in this process."""
    dead = f"127.0.0.1:{_free_port()}"
    with GridController([dead, grid_server.endpoint], credentials=grid_server.credentials(ADMIN), timeout=10) as ctl:
        assert "counters" in ctl.status() and ctl.endpoint == grid_server.endpoint
    status = _cli("status", "--tls-dir", str(tls_dir), "--name", ADMIN, "--endpoint", f"{dead},{grid_server.endpoint}",
                  "--timeout", "10")
    assert status.returncode == 0 and "workers: 0" in status.stdout, status.stderr


def test_every_endpoint_down_fails_after_the_timeout() -> None:
    dead = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    with GridClient(dead, timeout=0.5) as client, pytest.raises(RpcException) as failed:
        client.submit("echo", "1", b"x")
    assert failed.value.rc == ResultCode.ERROR_RPC and "unreachable" in failed.value.message
    assert dead[0] in failed.value.message and dead[1] in failed.value.message


async def test_async_client_carries_on_with_b(
    two_servers: Servers, start_worker: StartWorker
) -> None:
    a, b = two_servers
    start_worker("--endpoint", f"{a.endpoint},{b.endpoint}")
    async with AsyncGridClient([a.endpoint, b.endpoint], timeout=30) as client:
        assert await client.map("echo", "1", [b"1", b"2"], timeout=WAIT) == [b"1", b"2"]
        held = await client.submit("nobody", "1", b"x")
        a.kill()
        with pytest.raises(JobError) as failed:
            await held.result(WAIT)
        assert failed.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
        assert client.endpoint == b.endpoint
        assert await client.map("echo", "1", [b"3", b"4"], timeout=WAIT) == [b"3", b"4"]


#: A server that takes the results stream and dies on the first submit, before answering it.
_DYING = textwrap.dedent(
    """
    import os, signal, threading
    from concurrent import futures
    import grpc

    def results(request, context):
        threading.Event().wait()  # hold the stream until the process dies
        yield b""

    def submit(request, context):
        os.kill(os.getpid(), signal.SIGKILL)

    raw = lambda b: b
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("grpc_helper.grid.GridClientService", {
        "submit": grpc.unary_unary_rpc_method_handler(submit, raw, raw),
        "results": grpc.unary_stream_rpc_method_handler(results, raw, raw),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()
    """
)


def test_submit_whose_answer_was_lost_is_raised_not_resent(two_servers: Servers) -> None:
    _, b = two_servers
    dying = subprocess.Popen([sys.executable, "-c", _DYING], stdout=subprocess.PIPE, text=True)
    try:
        assert dying.stdout is not None
        a = f"127.0.0.1:{int(dying.stdout.readline())}"
        with GridClient([a, b.endpoint], timeout=30) as client:
            with pytest.raises(RpcException) as lost:
                client.submit("echo", "1", b"x")
            assert dying.wait(WAIT) == -signal.SIGKILL  # it died with the submit
            assert lost.value.rc == ResultCode.ERROR_RPC
            assert "not re-sent to another endpoint" in lost.value.message and "may or may not" in lost.value.message
            # Not re-sent: B never saw it (B's first job is the next one). The client carries on with B.
            follow = client.submit("nobody", "1", b"y")
            assert client.endpoint == b.endpoint
            assert follow.cancel() and client.get_result(follow.job_id).state == pb.JOB_CANCELLED
    finally:
        if dying.poll() is None:
            dying.kill()
        dying.wait(WAIT)


@pytest.mark.parametrize(
    ("message", "once", "expected"),
    [
        ("server h:1 unreachable for 0s: failed to connect to all addresses; last error: ...refused", True, Next.MOVE),
        ("server h:1 unreachable for 0s: DNS resolution failed for nowhere:1", True, Next.MOVE),
        ("server h:1 unreachable for 0s: Stream removed (Socket closed)", True, Next.LEAVE),
        ("server h:1 unreachable for 0s: Stream removed (Socket closed)", False, Next.MOVE),
    ],
)
def test_failover_decisions(message: str, once: bool, expected: Next) -> None:
    assert failover(RpcException(message, ResultCode.ERROR_RPC), once=once) is expected


@pytest.mark.parametrize("rc", [ResultCode.ERROR_DEADLINE, ResultCode.ERROR_PERMISSION_DENIED, ResultCode.ERROR_RESOURCE_EXHAUSTED])
def test_answers_and_deadlines_are_not_failed_over(rc: int) -> None:
    assert failover(RpcException("no", rc), once=False) is Next.RAISE
    shut = RpcException("grid is shut down", ResultCode.ERROR_STREAM_SHUTDOWN)
    assert failover(shut, once=False) is Next.MOVE and failover(shut, once=True) is Next.LEAVE


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grpc_helper.grid", *args], capture_output=True, text=True,
                          timeout=60, env=worker_env(), cwd=ROOT)


def test_cli_submit_fails_over(two_servers: Servers, start_worker: StartWorker) -> None:
    _, b = two_servers
    dead = f"127.0.0.1:{_free_port()}"
    start_worker("--endpoint", dead, "--endpoint", b.endpoint)
    submit = _cli("submit", "--insecure", "--endpoint", dead, "--endpoint", b.endpoint, "--service", "echo",
                  "--version", "1", "--timeout", "20", "hello")
    assert submit.returncode == 0 and ": hello" in submit.stdout, submit.stderr


def test_cli_endpoint_lists_and_backend_are_checked(tmp_path: Path) -> None:
    for bad in ("127.0.0.1:1,", "127.0.0.1:1,[::1", "127.0.0.1"):
        result = _cli("status", "--insecure", "--endpoint", bad)
        assert result.returncode == ExitCode.USAGE and "invalid endpoint" in result.stderr, result.stderr
    down = _cli("status", "--insecure", "--timeout", "0.5", "--endpoint", f"127.0.0.1:{_free_port()},127.0.0.1:{_free_port()}")
    assert down.returncode == ExitCode.UNREACHABLE and down.stderr.count("\n") == 1, down.stderr
    unknown = _cli("serve", "--insecure", "--port", "0", "--backend", "nosuch", "--state-dir", str(tmp_path / "s"))
    assert unknown.returncode == ExitCode.USAGE and unknown.stderr.count("\n") == 1 and "nosuch" in unknown.stderr, unknown.stderr


def test_worker_gives_up_after_connect_timeout_over_every_endpoint() -> None:
    from grpc_helper.grid import GridWorker

    dead = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    worker = GridWorker(",".join(dead), "echo", "1", bytes.upper, connect_timeout=0.5)
    with pytest.raises(RpcException) as failed:
        worker.run(install_signals=False)
    assert failed.value.rc == ResultCode.ERROR_RPC and worker.reconnections >= 1  # it tried the next endpoint


def test_endpoint_lists_in_the_python_api() -> None:
    with pytest.raises(ValueError, match="invalid endpoint"):
        GridClient("127.0.0.1:1,nope")
    with pytest.raises(ValueError, match="no endpoint"):
        GridController([])
    with GridClient(["127.0.0.1:1,[::1]:2", "127.0.0.1:1"]) as client:  # duplicates once, IPv6 in brackets
        assert client.endpoint == "127.0.0.1:1"
