"""Queue backends: the sqlite backend keeps accepted jobs and undelivered results across server processes.

The scheduler tests run on every backend (test_grid_scheduler.py); here: what only a durable backend does, and a
real grid server process SIGKILLed under a live client and live workers.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grpc_helper import ResultCode
from grpc_helper.grid import GridClient, JobError
from grpc_helper.grid.backends import MemoryBackend, SqliteBackend, StateDirBusy, open_backend
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import JobState, WorkerResult
from grpc_helper.grid.scheduler import Scheduler

from .conftest import ROOT, WAIT, GridProcess, worker_env

KEY = ("echo", "1")


def results(s: Scheduler, session: str) -> list[tuple[int, JobState, bytes]]:
    token, unknown = s.open_stream(session, "", [], lambda: None)
    assert unknown == []
    out = s.take_results(session, token) or []
    s.ack(session, "", [v.job_id for v in out])
    s.close_stream(session, token)
    return [(v.job_id, v.state, v.data) for v in out]


def test_sqlite_recovers_queued_jobs_and_unacknowledged_results(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = SqliteBackend(state)
    s = Scheduler(GridLimits(max_retries=3), backend=first)
    ids = s.submit("c", "", KEY, [b"a", b"b", b"c", b"d", b"e"])
    w = s.register_worker(KEY, concurrency=4)
    out = s.take_for_worker(w)
    assert out is not None
    a, b, c, _running = out.jobs
    s.worker_message(w, [WorkerResult(a.job_id, a.lease, True, b"A")])  # done, then acknowledged
    assert results(s, "c") == [(ids[0], JobState.DONE, b"A")]
    s.worker_message(w, [WorkerResult(b.job_id, b.lease, True, b"B")])  # done, not acknowledged
    s.worker_message(w, [WorkerResult(c.job_id, c.lease, False, error="boom")])  # failed once: queued again
    # d is running, e queued: the process "dies" here (its records stored, its leases never written).
    assert first.flush(WAIT)
    assert s.status()["backend"]["pending"] == 0
    first.close()

    second = SqliteBackend(state)
    again = Scheduler(GridLimits(max_retries=3), backend=second)
    try:
        assert again.status()["counters"]["recovered"] == 4
        assert again.status()["held"]["jobs"] == 4
        # The unacknowledged result waits for its session's next stream; the others run (again).
        assert results(again, "c") == [(ids[1], JobState.DONE, b"B")]
        w2 = again.register_worker(KEY, concurrency=8)
        out = again.take_for_worker(w2)
        assert out is not None and sorted(j.job_id for j in out.jobs) == ids[2:]
        assert again.get_result(ids[2], "c", "").state == JobState.RUNNING
        again.worker_message(w2, [WorkerResult(j.job_id, j.lease, True, j.data.upper()) for j in out.jobs])
        assert results(again, "c") == [(i, JobState.DONE, p) for i, p in zip(ids[2:], [b"C", b"D", b"E"], strict=True)]
        assert again.get_result(ids[2], "c", "").attempts == 2  # the failed run before the restart counts
        assert again.get_result(ids[3], "c", "").attempts == 1  # leased, never started: not counted
        [last] = again.submit("c", "", KEY, [b"f"])
        assert last > ids[-1]  # ids keep growing
        assert again.status()["held"]["jobs"] == 1
        assert second.flush(WAIT)
    finally:
        second.close()
    third = SqliteBackend(state)
    try:
        assert [(job.id, job.state) for job in third.recover()] == [(last, JobState.QUEUED)]
    finally:
        third.close()


def test_failures_survive_a_restart(tmp_path: Path) -> None:
    """Retry counts are stored with the re-queued job: a restart never grants a failing job new retries."""
    backend = SqliteBackend(tmp_path)
    s = Scheduler(GridLimits(max_retries=1), backend=backend)
    [job_id] = s.submit("c", "", KEY, [b"x"])
    w = s.register_worker(KEY)
    out = s.take_for_worker(w)
    assert out is not None
    s.worker_message(w, [WorkerResult(job_id, out.jobs[0].lease, False, error="first")])
    assert backend.flush(WAIT)
    backend.close()
    backend = SqliteBackend(tmp_path)
    try:
        s = Scheduler(GridLimits(max_retries=1), backend=backend)
        w = s.register_worker(KEY)
        out = s.take_for_worker(w)
        assert out is not None
        s.worker_message(w, [WorkerResult(job_id, out.jobs[0].lease, False, error="second")])
        view = s.get_result(job_id, "c", "")
        assert view.state == JobState.FAILED and "failed 2 times: second" in view.error
        assert view.rc == ResultCode.ERROR_CUSTOM
    finally:
        backend.close()


def test_durable_close_keeps_jobs_for_the_next_server(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    s = Scheduler(backend=backend)
    ids = s.submit("c", "", KEY, [b"x", b"y"])
    assert s.close() == 0  # nothing failed: the jobs stay stored
    backend.close()
    backend = SqliteBackend(tmp_path)
    try:
        assert [(job.id, job.state, job.payload) for job in backend.recover()] == [
            (ids[0], JobState.QUEUED, b"x"),
            (ids[1], JobState.QUEUED, b"y"),
        ]
    finally:
        backend.close()


def test_released_jobs_are_deleted(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    try:
        s = Scheduler(backend=backend)
        ids = s.submit("c", "", KEY, [b"x", b"y"])
        assert backend.flush(WAIT)
        assert len(backend.recover()) == 2
        s.cancel(ids[0], "c", "")
        assert s.close_session("c", "") == 1  # y cancelled, both released
        assert backend.flush(WAIT)
        assert backend.recover() == []
    finally:
        backend.close()


def test_state_dir_is_locked_and_private(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "state")
    try:
        with pytest.raises(StateDirBusy, match="in use by another grid server"):
            SqliteBackend(tmp_path / "state")
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        assert backend.path.stat().st_mode & 0o777 == 0o600
    finally:
        backend.close()
    SqliteBackend(tmp_path / "state").close()  # released at close


def test_second_server_on_a_state_dir_is_refused(durable_grid_process: GridProcess, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "grpc_helper.grid", "serve", "--insecure", "--port", "0", "--state-dir",
            str(tmp_path / "grid-state")]  # the fixture's state directory
    second = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, env=worker_env(), cwd=ROOT)
    assert second.returncode == 7, second.stderr
    assert second.stderr.startswith("error: state directory ") and "in use by another grid server" in second.stderr
    assert durable_grid_process.proc is not None and durable_grid_process.proc.poll() is None


def test_open_backend(tmp_path: Path) -> None:
    assert isinstance(open_backend("memory"), MemoryBackend)
    backend = open_backend("sqlite", tmp_path)
    assert isinstance(backend, SqliteBackend) and backend.status()["durable"] is True
    backend.close()
    with pytest.raises(ValueError, match="unknown grid backend 'postgres'"):
        open_backend("postgres")


def test_bursts_stored_then_deleted(tmp_path: Path) -> None:
    """Many records from many calls (group commit: one transaction holds what piled up during the previous one)."""
    backend = SqliteBackend(tmp_path)
    try:
        s = Scheduler(backend=backend)
        for i in range(200):
            s.submit(f"s{i}", "", KEY, [b"x" * 10] * 50)
        assert backend.flush(WAIT)
        status = backend.status()
        assert len(backend.recover()) == 10_000
        assert 1 <= status["commits"] <= 200 and status["rows_written"] == 10_000 and status["errors"] == 0
        for i in range(200):
            s.close_session(f"s{i}", "")
        assert backend.flush(WAIT)
        assert backend.recover() == []
    finally:
        backend.close()


def test_server_sigkilled_under_live_client_and_workers(
    durable_grid_process: GridProcess, spawn_worker, tmp_path: Path
) -> None:
    """sqlite backend: every accepted job reaches the application exactly once, none is reported unknown (the
    memory backend reports the killed server's jobs unknown: test_grid_failures.py)."""
    server = durable_grid_process
    workers = [spawn_worker("grid_handlers:tick", "echo", "1", "--prefetch", "16", server=server) for _ in range(2)]
    payloads = [b"job-%04d" % i for i in range(600)]
    settled: dict[int, int] = {}
    lock = threading.Lock()
    some_done = threading.Event()
    with GridClient(server.endpoint, timeout=WAIT) as client:
        handles = client.submit_batch("echo", "1", payloads)

        def count(index: int) -> None:
            with lock:
                settled[index] = settled.get(index, 0) + 1
                if len(settled) >= 100:
                    some_done.set()

        for i, handle in enumerate(handles):
            handle.future.add_done_callback(lambda _f, i=i: count(i))
        assert some_done.wait(WAIT)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # mid-batch: jobs queued, leased, running, results unacknowledged
        server.proc.wait(WAIT)
        server.start()
        got = []
        for handle in handles:
            try:
                got.append(handle.result(WAIT))
            except JobError as exc:
                pytest.fail(f"job {handle.job_id} failed after the restart: rc={exc.rc} {exc.message}")
        assert got == payloads
        assert client.submit("echo", "1", b"after").result(WAIT) == b"after"
    with lock:
        assert sorted(settled) == list(range(len(payloads))) and set(settled.values()) == {1}
    assert all(w.poll() is None for w in workers)  # the workers reconnected to the restarted server
    assert server.stop() == 0
    backend = SqliteBackend(tmp_path / "grid-state")  # the fixture's state directory
    try:
        assert backend.recover() == []  # everything delivered, acknowledged and released: nothing left behind
    finally:
        backend.close()


def test_hosted_sqlite_backend_and_status(grid_server_factory, spawn_worker, tmp_path: Path) -> None:
    """``descriptors(backend=...)`` on an ``AsyncRpcServer``; ``grid status`` prints the backend first."""
    backend = open_backend("sqlite", tmp_path / "hosted")
    server = grid_server_factory(backend=backend)
    spawn_worker("grid_handlers:upper", server=server)
    with server.client() as client:
        assert client.submit("echo", "1", b"kept").result(WAIT) == b"KEPT"
    out = server.cli("status")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"backend: sqlite ({tmp_path / 'hosted' / 'grid.sqlite3'}), durable: yes"
    status = server.status()["backend"]
    assert status["commits"] >= 1 and status["errors"] == 0
    server.stop()  # the grid closes its backend: the state directory is free again
    SqliteBackend(tmp_path / "hosted").close()


def test_unusable_state_dir_is_one_line_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "grid.sqlite3").write_bytes(b"not a database" * 100)
    for state, message in ((not_a_dir, "File exists"), (garbage, "file is not a database")):
        argv = [sys.executable, "-m", "grpc_helper.grid", "serve", "--insecure", "--port", "0", "--state-dir", str(state)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, env=worker_env(), cwd=ROOT)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot open the grid state in {state}: "), lines
        assert message in lines[0] and "Traceback" not in result.stderr
