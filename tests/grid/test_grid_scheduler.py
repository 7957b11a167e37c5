"""Unit tests of the grid scheduler (pure logic, no gRPC)."""

from __future__ import annotations

import threading

import pytest

from grpc_helper import ResultCode
from grpc_helper.grid import model as sched
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import (
    GridClosedError,
    GridLimitError,
    GridUnknownError,
    JobState,
    WorkerResult,
)
from grpc_helper.grid.scheduler import Scheduler

KEY = ("echo", "1")


def ok(dispatch: sched.Dispatch, data: bytes | None = None) -> WorkerResult:
    return WorkerResult(dispatch.job_id, dispatch.attempt, True, dispatch.data if data is None else data)


def drain_results(s: Scheduler, session: str) -> list[sched.JobView]:
    token = s.open_stream(session)
    out = s.next_results(session, token, timeout=0)
    s.close_stream(session, token)
    return out or []


def test_routing_waits_for_matching_worker() -> None:
    s = Scheduler()
    ids = s.submit("c1", ("echo", "2"), [b"a", b"b"])
    w1 = s.register_worker(KEY, concurrency=4)
    assert s.next_for_worker(w1, timeout=0) == sched.WorkerOutput()
    w2 = s.register_worker(("echo", "2"), concurrency=1, prefetch=1)
    out = s.next_for_worker(w2, timeout=0)
    assert out is not None and [d.job_id for d in out.jobs] == ids
    s.worker_results(w2, [ok(d) for d in out.jobs])
    results = drain_results(s, "c1")
    assert [(r.job_id, r.state, r.data) for r in results] == [(ids[0], JobState.DONE, b"a"), (ids[1], JobState.DONE, b"b")]
    assert drain_results(s, "c2") == []


def test_window_and_least_loaded() -> None:
    s = Scheduler()
    w1 = s.register_worker(KEY, concurrency=1, prefetch=2)
    w2 = s.register_worker(KEY, concurrency=1, prefetch=2)
    s.submit("c", KEY, [bytes([i]) for i in range(10)])
    o1, o2 = s.next_for_worker(w1, timeout=0), s.next_for_worker(w2, timeout=0)
    assert o1 is not None and o2 is not None
    assert len(o1.jobs) == 3 and len(o2.jobs) == 3
    assert s.status()["queues"][0]["depth"] == 4
    s.worker_results(w1, [ok(o1.jobs[0])])
    more = s.next_for_worker(w1, timeout=0)
    assert more is not None and len(more.jobs) == 1


def test_worker_loss_requeues_and_first_result_wins() -> None:
    s = Scheduler()
    w1 = s.register_worker(KEY)
    [job_id] = s.submit("c", KEY, [b"x"])
    out = s.next_for_worker(w1, timeout=0)
    assert out is not None and out.jobs[0].attempt == 1
    s.worker_gone(w1)
    assert s.next_for_worker(w1, timeout=0) is None
    w2 = s.register_worker(KEY)
    out2 = s.next_for_worker(w2, timeout=0)
    assert out2 is not None and out2.jobs[0].attempt == 2
    s.worker_results(w2, [ok(out2.jobs[0], b"second")])
    s.worker_results(w2, [ok(out2.jobs[0], b"again")])  # duplicate: ignored
    results = drain_results(s, "c")
    assert [(r.job_id, r.data, r.attempts) for r in results] == [(job_id, b"second", 2)]
    assert s.status()["counters"]["duplicates"] == 1
    assert s.status()["counters"]["requeued"] == 1


def test_retries_then_error() -> None:
    s = Scheduler(GridLimits(max_retries=2))
    w = s.register_worker(KEY)
    [job_id] = s.submit("c", KEY, [b"x"])
    for _ in range(3):
        out = s.next_for_worker(w, timeout=0)
        assert out is not None and len(out.jobs) == 1
        d = out.jobs[0]
        s.worker_results(w, [WorkerResult(d.job_id, d.attempt, False, error="boom")])
    [r] = drain_results(s, "c")
    assert r.state == JobState.FAILED and "boom" in r.error and r.rc == ResultCode.ERROR_CUSTOM and r.attempts == 3
    assert s.get_result(job_id).state == JobState.FAILED


def test_limits() -> None:
    s = Scheduler(GridLimits(max_jobs=3, max_payload_bytes=4, max_batch=2))
    with pytest.raises(GridLimitError, match="max_payload_bytes"):
        s.submit("c", KEY, [b"12345"])
    with pytest.raises(GridLimitError, match="max_batch"):
        s.submit("c", KEY, [b"1", b"2", b"3"])
    s.submit("c", KEY, [b"1", b"2"])
    s.submit("c", KEY, [b"3"])
    with pytest.raises(GridLimitError, match="max_jobs"):
        s.submit("c", KEY, [b"4"])
    # delivering results frees room
    w = s.register_worker(KEY, concurrency=3)
    out = s.next_for_worker(w, timeout=0)
    assert out is not None
    s.worker_results(w, [ok(d) for d in out.jobs])
    with pytest.raises(GridLimitError):
        s.submit("c", KEY, [b"4"])  # results not delivered yet still count
    assert len(drain_results(s, "c")) == 3
    s.submit("c", KEY, [b"4"])


def test_cancel_queued_and_running() -> None:
    s = Scheduler()
    a, b = s.submit("c", KEY, [b"a", b"b"])
    assert s.cancel(a).state == JobState.CANCELLED
    w = s.register_worker(KEY)
    out = s.next_for_worker(w, timeout=0)
    assert out is not None and [d.job_id for d in out.jobs] == [b]
    assert s.cancel(b, "c").state == JobState.CANCELLED
    with pytest.raises(GridUnknownError):
        s.cancel(b, "other-session")
    s.worker_results(w, [ok(out.jobs[0])])  # late result: ignored, lease freed
    assert {r.job_id: r.state for r in drain_results(s, "c")} == {a: JobState.CANCELLED, b: JobState.CANCELLED}
    assert s.status()["workers"][0]["in_flight"] == 0


def test_stop_and_drain_give_back() -> None:
    s = Scheduler()
    w1 = s.register_worker(KEY, concurrency=1, prefetch=3)
    s.submit("c", KEY, [b"1", b"2", b"3", b"4"])
    out = s.next_for_worker(w1, timeout=0)
    assert out is not None and len(out.jobs) == 4
    s.stop_worker(w1.id)
    assert s.next_for_worker(w1, timeout=0) == sched.WorkerOutput(stop=True)
    s.give_back(w1, [d.job_id for d in out.jobs[1:]])
    s.worker_results(w1, [ok(out.jobs[0])])
    s.worker_gone(w1, lost=False)
    w2 = s.register_worker(KEY, concurrency=1, prefetch=3)
    out2 = s.next_for_worker(w2, timeout=0)
    assert out2 is not None and [d.job_id for d in out2.jobs] == [d.job_id for d in out.jobs[1:]]
    assert s.status()["counters"]["requeued"] == 0


def test_blocking_wakeups_and_close() -> None:
    s = Scheduler()
    w = s.register_worker(KEY)
    token = s.open_stream("c")
    got: list[object] = []

    def worker_side() -> None:
        got.append(s.next_for_worker(w))

    t = threading.Thread(target=worker_side)
    t.start()
    [job_id] = s.submit("c", KEY, [b"x"])
    t.join(5)
    out = got[0]
    assert isinstance(out, sched.WorkerOutput) and out.jobs[0].job_id == job_id
    s.submit("c", KEY, [b"y"])  # x running, y queued: both failed at close
    assert s.close() == 2
    batch = s.next_results("c", token)
    assert batch is not None and [r.rc for r in batch] == [ResultCode.ERROR_STREAM_SHUTDOWN] * 2
    with pytest.raises(GridClosedError):
        s.next_results("c", token)
    with pytest.raises(GridClosedError):
        s.submit("c", KEY, [b"z"])
    assert s.next_for_worker(w) == sched.WorkerOutput(stop=True)
    assert s.next_for_worker(w) is None


def test_heartbeat_expiry() -> None:
    now = [0.0]
    s = Scheduler(GridLimits(heartbeat_interval=1, heartbeat_timeout=3), clock=lambda: now[0])
    w = s.register_worker(KEY)
    s.submit("c", KEY, [b"x"])
    out = s.next_for_worker(w, timeout=0)
    assert out is not None and len(out.jobs) == 1
    now[0] = 10.0
    s.start()
    try:
        assert s.next_for_worker(w, timeout=5) is None  # the reaper dropped it and woke us
        assert s.status()["queues"][0]["depth"] == 1
    finally:
        s.close()


def test_retention_and_get_result() -> None:
    s = Scheduler(GridLimits(max_retained=1))
    w = s.register_worker(KEY, concurrency=2)
    a, b = s.submit("c", KEY, [b"a", b"b"])
    out = s.next_for_worker(w, timeout=0)
    assert out is not None
    s.worker_results(w, [ok(d) for d in out.jobs])
    assert s.get_result(a).data == b"a"  # counts as delivered: the stream won't repeat it
    assert [r.job_id for r in drain_results(s, "c")] == [b]
    with pytest.raises(GridUnknownError):
        s.get_result(a)  # dropped: only one retained
    assert s.get_result(b).data == b"b"
