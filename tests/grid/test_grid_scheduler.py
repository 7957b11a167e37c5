"""Unit tests of the grid scheduler (pure logic, no gRPC, a fake clock), on every backend."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from grpc_helper import ResultCode
from grpc_helper.grid import model as sched
from grpc_helper.grid import scheduler as scheduler_module
from grpc_helper.grid.backends import SqliteBackend
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import GridClosedError, GridLimitError, GridParamError, GridUnknownError, JobState, WorkerResult
from grpc_helper.grid.scheduler import Scheduler as _Scheduler

KEY = ("echo", "1")

#: Builds the schedulers of the current test, on the backend it is parametrized with (set by ``backend``).
Scheduler: Callable[..., _Scheduler] = _Scheduler


@pytest.fixture(autouse=True, params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run every test of this module on each backend (sqlite: a fresh state directory per scheduler)."""
    opened: list[SqliteBackend] = []
    counter = itertools.count()

    def make(*args: Any, **kwargs: Any) -> _Scheduler:
        if request.param == "sqlite":
            kwargs["backend"] = SqliteBackend(tmp_path / f"state-{next(counter)}")
            opened.append(kwargs["backend"])
        return scheduler_module.Scheduler(*args, **kwargs)

    monkeypatch.setitem(globals(), "Scheduler", make)
    yield request.param
    for store in opened:
        store.close()


def ok(dispatch: sched.Dispatch, data: bytes | None = None) -> WorkerResult:
    return WorkerResult(dispatch.job_id, dispatch.lease, True, dispatch.data if data is None else data)


def take(s: Scheduler, worker: sched.Worker) -> list[sched.Dispatch]:
    out = s.take_for_worker(worker)
    assert out is not None
    return out.jobs


def results(s: Scheduler, session: str, owner: str = "", *, ack: bool = True) -> list[sched.JobView]:
    token, _ = s.open_stream(session, owner, [], lambda: None)
    out = s.take_results(session, token) or []
    if ack:
        s.ack(session, owner, [v.job_id for v in out])
    s.close_stream(session, token)
    return out


def test_routing_waits_for_matching_worker() -> None:
    s = Scheduler()
    ids = s.submit("c1", "", ("echo", "2"), [b"a", b"b"])
    w1 = s.register_worker(KEY, concurrency=4)
    assert take(s, w1) == []
    w2 = s.register_worker(("echo", "2"), concurrency=1, prefetch=1)
    jobs = take(s, w2)
    assert [d.job_id for d in jobs] == ids
    s.worker_message(w2, [ok(d) for d in jobs])
    assert [(r.job_id, r.state, r.data) for r in results(s, "c1")] == [(ids[0], JobState.DONE, b"a"), (ids[1], JobState.DONE, b"b")]
    assert results(s, "c2") == []


def test_ids_grow_across_restarts() -> None:
    first = Scheduler().submit("c", "", KEY, [b"x"])[0]
    assert Scheduler().submit("c", "", KEY, [b"x"])[0] > first


def test_window_and_least_loaded() -> None:
    s = Scheduler()
    w1 = s.register_worker(KEY, concurrency=1, prefetch=2)
    w2 = s.register_worker(KEY, concurrency=1, prefetch=2)
    s.submit("c", "", KEY, [bytes([i]) for i in range(10)])
    j1, j2 = take(s, w1), take(s, w2)
    assert len(j1) == 3 and len(j2) == 3
    assert s.status()["queues"][0]["depth"] == 4
    s.worker_message(w1, [ok(j1[0])])
    assert len(take(s, w1)) == 1


def test_attempts_count_only_started_runs() -> None:
    s = Scheduler(GridLimits(max_lost=2))
    w1 = s.register_worker(KEY, concurrency=1, prefetch=3)
    poison, *innocents = s.submit("c", "", KEY, [b"p", b"1", b"2", b"3"])
    jobs = take(s, w1)
    s.worker_message(w1, started=[poison])
    s.worker_gone(w1, "killed")
    assert s.status()["counters"]["requeued"] == 1 and s.status()["counters"]["returned"] == 3
    w2 = s.register_worker(KEY, concurrency=1, prefetch=3)
    again = take(s, w2)
    assert [d.job_id for d in again] == [d.job_id for d in jobs]
    assert all(d.confirm_start for d in again)  # leased to a lost worker: their starts are confirmed
    s.worker_message(w2, started=[poison])
    s.worker_gone(w2, "killed again")  # second run lost: max_lost reached
    w3 = s.register_worker(KEY, concurrency=4)
    rest = take(s, w3)
    assert [d.job_id for d in rest] == innocents
    s.worker_message(w3, [ok(d) for d in rest])
    by_id = {r.job_id: r for r in results(s, "c")}
    assert by_id[poison].state == JobState.FAILED and by_id[poison].rc == ResultCode.ERROR_RPC
    assert "lost 2 times while running it (last: killed again)" in by_id[poison].error
    assert by_id[poison].attempts == 2
    assert [(by_id[i].state, by_id[i].attempts) for i in innocents] == [(JobState.DONE, 1)] * 3


def test_only_the_leasing_worker_completes_a_job() -> None:
    s = Scheduler()
    honest = s.register_worker(KEY)
    forger = s.register_worker(("other", "1"))
    [job_id] = s.submit("c", "", KEY, [b"x"])
    [d] = take(s, honest)
    s.worker_message(forger, [WorkerResult(job_id, d.lease, True, b"forged")])
    assert s.status()["counters"]["refused"] == 1
    s.worker_message(honest, [WorkerResult(job_id, d.lease + 1, True, b"stale lease")])
    s.worker_message(honest, [ok(d, b"real")])
    [r] = results(s, "c")
    assert r.data == b"real"
    assert s.status()["held"]["jobs"] == 0


def test_worker_loss_requeues_and_first_result_wins() -> None:
    s = Scheduler()
    w1 = s.register_worker(KEY)
    [job_id] = s.submit("c", "", KEY, [b"x"])
    take(s, w1)
    s.worker_message(w1, started=[job_id])
    s.worker_gone(w1)
    assert s.take_for_worker(w1) is None
    w2 = s.register_worker(KEY)
    [d] = take(s, w2)
    s.worker_message(w2, [ok(d, b"second")])
    s.worker_message(w2, [ok(d, b"again")])  # not leased anymore: refused
    assert [(r.job_id, r.data, r.attempts) for r in results(s, "c")] == [(job_id, b"second", 2)]
    assert s.status()["counters"]["requeued"] == 1


def test_retries_then_error() -> None:
    s = Scheduler(GridLimits(max_retries=2))
    w = s.register_worker(KEY)
    [job_id] = s.submit("c", "", KEY, [b"x"])
    for _ in range(3):
        [d] = take(s, w)
        s.worker_message(w, [WorkerResult(d.job_id, d.lease, False, error="boom")])
    [r] = results(s, "c")
    assert r.state == JobState.FAILED and "boom" in r.error and r.rc == ResultCode.ERROR_CUSTOM and r.attempts == 3
    assert s.get_result(job_id, "c", "").state == JobState.FAILED


def test_quotas_per_session_and_grid() -> None:
    s = Scheduler(GridLimits(max_jobs=5, max_session_jobs=3, max_payload_bytes=4, max_batch=3))
    with pytest.raises(GridLimitError, match="max_payload_bytes"):
        s.submit("c", "", KEY, [b"12345"])
    with pytest.raises(GridLimitError, match="max_batch"):
        s.submit("c", "", KEY, [b"1", b"2", b"3", b"4"])
    s.submit("careless", "", KEY, [b"1", b"2", b"3"])
    with pytest.raises(GridLimitError, match="max_session_jobs=3"):
        s.submit("careless", "", KEY, [b"4"])
    s.submit("careful", "", KEY, [b"1", b"2"])  # another session still has room
    with pytest.raises(GridLimitError, match="max_jobs=5"):
        s.submit("third", "", KEY, [b"1"])
    w = s.register_worker(KEY, concurrency=5)
    s.worker_message(w, [ok(d) for d in take(s, w)])
    results(s, "careful", ack=False)  # sent but not acknowledged: still held
    with pytest.raises(GridLimitError):
        s.submit("careful", "", KEY, [b"1"])
    results(s, "careful")  # sent again, acknowledged: released
    s.submit("careful", "", KEY, [b"1"])
    assert s.status()["counters"]["rejected"] == 3


def test_identity_quota_and_ownership() -> None:
    s = Scheduler(GridLimits(max_identity_jobs=2))
    [job_id] = s.submit("s1", "alice", KEY, [b"1"])
    s.submit("s2", "alice", KEY, [b"2"])
    with pytest.raises(GridLimitError, match="'alice' holds 2 jobs"):
        s.submit("s3", "alice", KEY, [b"3"])
    s.submit("s4", "bob", KEY, [b"3"])
    for attempt in (
        lambda: s.get_result(job_id, "s1", "bob"),
        lambda: s.cancel(job_id, "s1", "bob"),
        lambda: s.submit("s1", "bob", KEY, [b"x"]),
        lambda: s.open_stream("s1", "bob", [], lambda: None),
        lambda: s.ack("s1", "bob", [job_id]),
        lambda: s.get_result(job_id, "s4", "bob"),
    ):
        with pytest.raises(GridUnknownError):
            attempt()
    with pytest.raises(GridParamError, match="session is required"):
        s.get_result(job_id, "", "alice")
    assert s.get_result(job_id, "s1", "alice").state == JobState.QUEUED


def test_results_sent_again_until_acknowledged() -> None:
    s = Scheduler()
    w = s.register_worker(KEY, concurrency=2)
    a, b = s.submit("c", "", KEY, [b"a", b"b"])
    s.worker_message(w, [ok(d) for d in take(s, w)])
    assert [r.job_id for r in results(s, "c", ack=False)] == [a, b]
    token, unknown = s.open_stream("c", "", [a, b, 12345], lambda: None)
    assert [(u.job_id, u.rc) for u in unknown] == [(12345, ResultCode.ERROR_ITEM_UNKNOWN)]
    assert "unknown to the server" in unknown[0].error and "resubmit" in unknown[0].error
    batch = s.take_results("c", token)
    assert batch is not None and [r.job_id for r in batch] == [a, b]
    assert s.ack("c", "", [a, b, a]) == 2
    assert s.take_results("c", token) == []
    assert s.status()["counters"]["delivered"] == 2 and s.status()["held"]["jobs"] == 0


def test_cancel_queued_and_running() -> None:
    s = Scheduler()
    a, b = s.submit("c", "", KEY, [b"a", b"b"])
    assert s.cancel(a, "c", "").state == JobState.CANCELLED
    w = s.register_worker(KEY)
    [d] = take(s, w)
    assert d.job_id == b
    assert s.cancel(b, "c", "").state == JobState.CANCELLED
    with pytest.raises(GridUnknownError):
        s.cancel(b, "other-session", "")
    s.worker_message(w, [ok(d)])  # late result: ignored, lease freed
    assert {r.job_id: r.state for r in results(s, "c")} == {a: JobState.CANCELLED, b: JobState.CANCELLED}
    assert s.status()["workers"][0]["in_flight"] == 0


def test_stop_and_drain_give_back() -> None:
    s = Scheduler()
    w1 = s.register_worker(KEY, concurrency=1, prefetch=3)
    s.submit("c", "", KEY, [b"1", b"2", b"3", b"4"])
    jobs = take(s, w1)
    assert len(jobs) == 4
    s.stop_worker(w1.id)
    assert s.take_for_worker(w1) == sched.WorkerOutput(stop=True)
    s.give_back(w1, [d.job_id for d in jobs[1:]])
    s.worker_message(w1, [ok(jobs[0])])
    s.worker_gone(w1, lost=False)
    w2 = s.register_worker(KEY, concurrency=1, prefetch=3)
    assert [d.job_id for d in take(s, w2)] == [d.job_id for d in jobs[1:]]
    assert s.status()["counters"]["requeued"] == 0


def test_wakeups_and_close() -> None:
    s = Scheduler()
    woken: list[str] = []
    w = s.register_worker(KEY, wake=lambda: woken.append("worker"))
    token, _ = s.open_stream("c", "", [], lambda: woken.append("session"))
    [job_id] = s.submit("c", "", KEY, [b"x"])
    assert woken == ["worker"]
    assert [d.job_id for d in take(s, w)] == [job_id]
    s.submit("c", "", KEY, [b"y"])  # x running, y queued: failed at close, or kept for the next server
    if s.backend.durable:
        assert s.close() == 0
        assert "session" in woken
    else:
        assert s.close() == 2
        assert "session" in woken
        batch = s.take_results("c", token)
        assert batch is not None and [r.rc for r in batch] == [ResultCode.ERROR_STREAM_SHUTDOWN] * 2
    with pytest.raises(GridClosedError):
        s.take_results("c", token)
    with pytest.raises(GridClosedError):
        s.submit("c", "", KEY, [b"z"])
    assert s.take_for_worker(w) == sched.WorkerOutput(stop=True)
    assert s.take_for_worker(w) is None


def test_reaper_heartbeats_and_expiry() -> None:
    now = [0.0]
    s = Scheduler(GridLimits(heartbeat_interval=1, heartbeat_timeout=3, result_ttl=10, session_ttl=20), clock=lambda: now[0])
    w = s.register_worker(KEY)
    s.submit("c", "", KEY, [b"x"])
    take(s, w)
    now[0] = 2.0
    s.heartbeat(w)
    now[0] = 4.0
    s.reap()
    assert s.status()["workers"]  # heard 2 s ago
    now[0] = 5.0
    s.reap()
    assert not s.status()["workers"] and s.status()["queues"][0]["depth"] == 1
    w2 = s.register_worker(KEY)
    s.worker_message(w2, [ok(d) for d in take(s, w2)])  # completed at t=5, never collected
    s.submit("idle", "", ("nobody", "1"), [b"waits"])  # no stream, no call: the session expires
    now[0] = 15.0
    s.reap()
    counters = s.status()["counters"]
    assert counters["expired_results"] == 1 and counters["expired_sessions"] == 0
    now[0] = 30.0
    s.reap()
    status = s.status()
    assert status["counters"]["expired_sessions"] == 1 and status["held"]["jobs"] == 0
    assert status["sessions"]["count"] == 0


def test_retention_and_get_result() -> None:
    s = Scheduler(GridLimits(max_retained=1))
    w = s.register_worker(KEY, concurrency=2)
    a, b = s.submit("c", "", KEY, [b"a", b"b"])
    s.worker_message(w, [ok(d) for d in take(s, w)])
    assert s.get_result(a, "c", "").data == b"a"  # not an acknowledgement
    assert [r.job_id for r in results(s, "c")] == [a, b]
    with pytest.raises(GridUnknownError):
        s.get_result(a, "c", "")  # dropped: only one retained
    assert s.get_result(b, "c", "").data == b"b"


def test_a_stalled_server_does_not_blame_its_workers() -> None:
    now = [0.0]
    s = Scheduler(GridLimits(heartbeat_interval=0.1, heartbeat_timeout=0.5), clock=lambda: now[0])
    w = s.register_worker(KEY)
    s.reap()
    now[0] = 3.0  # the reaper ran 3 s late: the worker's heartbeats are still unread in the server's buffers
    s.reap()
    assert s.status()["workers"]
    now[0] = 3.1
    s.reap()
    now[0] = 3.2
    s.heartbeat(w)
    for tick in range(3, 9):  # on time again (every 0.1 s): 0.5 s without a word is lost
        now[0] = 3.2 + tick / 10
        s.reap()
    assert not s.status()["workers"] and s.status()["counters"]["workers_lost"] == 1


def test_default_prefetch_adapts_to_the_handler() -> None:
    from grpc_helper.grid._prefetch import Prefetch

    tiny, slow, fixed = Prefetch(None, 1), Prefetch(None, 1), Prefetch(8, 1)
    assert tiny.record(1e-6) == 512 and tiny.value == 512  # fast for tiny jobs
    assert slow.record(0.01) == 5 and slow.value == 5  # ~50 ms of work ahead: fair for slow ones
    assert fixed.record(1e-6) is None and fixed.value == 8
