"""The grid scheduler's state and the internals its roles share (``Scheduler`` builds on it).

Every method here runs with the scheduler's lock held by its caller, except ``__init__``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from grpc_helper import ResultCode
from grpc_helper.grid._admission import Admission
from grpc_helper.grid._backend import Backend, MemoryBackend
from grpc_helper.grid._delivery import Delivery
from grpc_helper.grid._dispatch import Dispatcher
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import (
    TERMINAL,
    GridParamError,
    GridUnknownError,
    JobRecord,
    JobState,
    JobView,
    Session,
)

COUNTERS = (
    "submitted",
    "done",
    "failed",
    "cancelled",
    "retried",
    "requeued",
    "returned",
    "duplicates",
    "refused",
    "rejected",
    "delivered",
    "expired_results",
    "expired_sessions",
    "unknown_reported",
    "workers_registered",
    "workers_lost",
    "recovered",
)

UNKNOWN_JOB = "job {} is unknown to the server (it restarted, or the result expired): resubmit"


def _first_job_id() -> int:
    # Ids keep growing across restarts (microseconds since the epoch): a client never mistakes a new job for
    # one it submitted to the previous server process.
    return time.time_ns() // 1000


class SchedulerCore:
    """The state: jobs, admission, delivery, dispatch, counters and the backend; recovery at start."""

    def __init__(
        self,
        limits: GridLimits | None = None,
        *,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or GridLimits()
        self.backend = backend or MemoryBackend()
        self._clock = clock
        self._lock = threading.Lock()
        self._next_id = _first_job_id()
        self._jobs: dict[int, JobRecord] = {}
        self._closed = False
        self._last_reap: float | None = None
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._admission = Admission(self.limits)
        self._delivery = Delivery(self.limits, self._jobs)
        self._dispatch = Dispatcher(
            self.limits, self._jobs, self.counters, self._finish, self.backend.updated,
            self.backend.wanted if self.backend.shared else None,
        )
        self._recover()

    def _recover(self) -> None:
        """Take back what the backend kept from the previous process: queued jobs run (again), results wait."""
        now = self._clock()
        recovered = self.backend.recover()
        for job in recovered:
            session = self._delivery.session(job.session, job.owner, now, create=True)
            self._jobs[job.id] = job
            self._admission.hold(session, job)
            if job.state in TERMINAL:
                self._delivery.completed(job, now)
            else:
                self._dispatch.enqueue(job)
            self._next_id = max(self._next_id, job.id + 1)
        self.counters["recovered"] = len(recovered)

    def _new_ids(self, count: int) -> range:
        ids = self.backend.job_ids(count)
        if ids is None:
            ids = range(self._next_id, self._next_id + count)
            self._next_id += count
        return ids

    def _unknown(self, session: Session, waiting: Iterable[int]) -> list[JobView]:
        unknown = [
            JobView(job_id, JobState.FAILED, error=UNKNOWN_JOB.format(job_id), rc=ResultCode.ERROR_ITEM_UNKNOWN)
            for job_id in waiting
            if job_id not in session.jobs and job_id not in self._delivery.retained
        ]
        self.counters["unknown_reported"] += len(unknown)
        return unknown

    def _job(self, job_id: int, session_id: str, owner: str) -> JobRecord:
        if not session_id:
            raise GridParamError("session is required")
        job = self._jobs.get(job_id)
        if job is None or job.session != session_id or job.owner != owner:
            raise GridUnknownError(f"unknown job {job_id} (not submitted by this session, or its result was dropped)")
        session = self._delivery.sessions.get(session_id)
        if session is not None:
            session.last_active = self._clock()
        return job

    def _end_session(self, session: Session) -> int:
        cancelled = 0
        self.backend.session_ended(session.id, [job for i in session.jobs if (job := self._jobs.get(i)) is not None])
        for job_id in list(session.jobs):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            if job.state not in TERMINAL:
                self._dispatch.withdraw(job)
                job.state = JobState.CANCELLED
                job.worker = None
                self.counters["cancelled"] += 1
                cancelled += 1
            self._admission.release(session, job)
            self._delivery.drop(session, job)
        session.outbox.clear()
        session.sent.clear()
        session.wake()
        session.stream = 0
        self._delivery.sessions.pop(session.id, None)
        return cancelled

    def _finish(
        self, job: JobRecord, state: JobState, data: bytes, error: str, rc: int, *, store: bool = True
    ) -> None:
        job.state = state
        job.worker = None
        job.payload = None
        job.data = data
        job.error = error
        job.rc = rc
        self.counters[{JobState.DONE: "done", JobState.FAILED: "failed"}.get(state, "cancelled")] += 1
        if store:
            self.backend.updated(job)
        session = self._delivery.sessions.get(job.session)
        if session is None or session.owner != job.owner:
            # Another server's session (shared backend): the result is stored; nothing of it stays here.
            self._jobs.pop(job.id, None)
            return
        if job.id not in session.jobs:
            self._admission.hold(session, job)  # a job leased here whose session just arrived (``adopt``)
        self._admission.resize(session, job, len(data))
        self._delivery.completed(job, self._clock())
