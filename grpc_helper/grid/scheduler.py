"""Grid scheduler: one lock over admission (quotas), delivery (sessions, acks), dispatch (leases) and expiry.

Pure logic: no I/O, no sleeps, no waiting. Streams learn that something is ready through the ``wake`` callbacks
of their worker or session, called under the lock; the host runs ``reap()`` periodically (heartbeats, expiry).
The working state lives in memory; the durable facts (jobs accepted, results, jobs released) are recorded
in a queue backend (``_backend``) as they happen, and recovered from it when the scheduler starts. On a
shared backend (several servers, one queue) submitted jobs go to the backend's queue and come back, to this
server's workers, through the ``Feed`` methods (``demand``, ``leased``, ``remote_results``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from grpc_helper import ResultCode
from grpc_helper.grid._backend import Backend
from grpc_helper.grid._scheduler_core import COUNTERS, UNKNOWN_JOB
from grpc_helper.grid._shared_feed import SharedFeed
from grpc_helper.grid._status import grid_status
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import (
    TERMINAL,
    GridClosedError,
    GridParamError,
    JobRecord,
    JobState,
    JobView,
    Key,
    Worker,
    WorkerOutput,
    WorkerResult,
    WorkerState,
)

__all__ = ["COUNTERS", "UNKNOWN_JOB", "Scheduler"]


class Scheduler(SharedFeed):
    """All grid state. Thread-safe; every public method takes the lock and returns at once.

    The state and the internals the roles share are in ``_scheduler_core``; what a shared backend calls, in
    ``_shared_feed``; the client, worker, reaper and controller roles here."""

    def __init__(
        self,
        limits: GridLimits | None = None,
        *,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits, backend=backend, clock=clock)
        self.backend.attach(self)  # a shared backend starts feeding this server's workers

    # ---- life cycle ----

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, reason: str = "grid shut down") -> int:
        """Stop workers, end result streams once flushed. Returns the number of jobs failed: on a durable
        backend none (they stay stored for the next server process), else every job not completed is failed
        (ERROR_STREAM_SHUTDOWN)."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            failed = 0
            for job in list(self._jobs.values()):
                if job.state not in TERMINAL and not self.backend.durable:
                    self._dispatch.withdraw(job)
                    self._finish(job, JobState.FAILED, b"", reason, ResultCode.ERROR_STREAM_SHUTDOWN)
                    failed += 1
            self._dispatch.queues.clear()
            for worker in self._dispatch.workers.values():
                worker.state = WorkerState.STOPPING
                worker.stop_pending = True
                worker.outbox.clear()
                worker.wake()
            for session in self._delivery.sessions.values():
                session.wake()
            return failed

    def pending_jobs(self) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.state not in TERMINAL)

    # ---- client role ----

    def submit(self, session_id: str, owner: str, key: Key, payloads: Sequence[bytes]) -> list[int]:
        """Queue one job per payload; returns their ids. Raises GridLimitError past a quota."""
        if not key[0]:
            raise GridParamError("service_id is required")
        if len(key[0]) > 256 or len(key[1]) > 256:
            raise GridParamError("service_id and service_version are at most 256 characters")
        size = self._admission.check_payloads(payloads)
        with self._lock:
            if self._closed:
                raise GridClosedError("grid is shut down")
            session = self._delivery.session(session_id, owner, self._clock(), create=True)
            try:
                self._admission.admit(session, len(payloads), size)
            except Exception:
                self.counters["rejected"] += len(payloads)
                self._delivery.forget_if_idle(session)
                raise
            jobs: list[JobRecord] = []
            shared = self.backend.shared
            for job_id in self._new_ids(len(payloads)):
                payload = payloads[len(jobs)]
                job = JobRecord(job_id, session_id, owner, key, payload, len(payload))
                self._jobs[job.id] = job
                self._admission.hold(session, job)
                if not shared:
                    self._dispatch.enqueue(job)
                jobs.append(job)
            self.backend.accepted(jobs)
            if shared:
                for job in jobs:
                    job.payload = None  # the shared queue has it; a worker of this server gets it from there
            ids = [job.id for job in jobs]
            self.counters["submitted"] += len(ids)
            self._dispatch.dispatch(key)
            return ids

    def get_result(self, job_id: int, session_id: str, owner: str) -> JobView:
        """State of a job of the caller's session (its result when completed); not an acknowledgement."""
        with self._lock:
            return self._job(job_id, session_id, owner).view()

    def cancel(self, job_id: int, session_id: str, owner: str) -> JobView:
        """Cancel a job not completed yet (a running job's late result is ignored)."""
        with self._lock:
            job = self._job(job_id, session_id, owner)
            if job.state not in TERMINAL:
                self._dispatch.withdraw(job)
                self._finish(job, JobState.CANCELLED, b"", "cancelled by client", ResultCode.ERROR_CANCELLED)
            return job.view()

    def close_session(self, session_id: str, owner: str) -> int:
        """The client leaves: cancel its jobs not completed, drop its results. Returns the jobs cancelled."""
        with self._lock:
            session = self._delivery.session(session_id, owner, self._clock(), create=False)
            return self._end_session(session)

    def open_stream(
        self, session_id: str, owner: str, waiting: Iterable[int], wake: Callable[[], None]
    ) -> tuple[int, list[JobView]]:
        """Attach a results stream to a session (replacing any previous one): (token, views of the ``waiting``
        jobs this server does not know, to report at once as failed with ERROR_ITEM_UNKNOWN)."""
        with self._lock:
            if self._closed:
                raise GridClosedError("grid is shut down")
            session = self._delivery.session(session_id, owner, self._clock(), create=True)
            token = self._delivery.open_stream(session)
            session.wake = wake
            return token, self._unknown(session, waiting)

    def close_stream(self, session_id: str, token: int) -> None:
        with self._lock:
            session = self._delivery.sessions.get(session_id)
            if session is not None and self._delivery.close_stream(session, token):
                session.last_active = self._clock()
                self._delivery.forget_if_idle(session)

    def take_results(self, session_id: str, token: int) -> list[JobView] | None:
        """The next results for the stream ([] if none yet); None once the stream is replaced or closed.

        Raises GridClosedError once the grid is shut down and every result has been handed over.
        """
        with self._lock:
            session = self._delivery.sessions.get(session_id)
            if session is None or session.stream != token:
                return None
            batch = self._delivery.take(session)
            if not batch and self._closed:
                raise GridClosedError("grid is shut down")
            return [job.view() for job in batch]

    def ack(self, session_id: str, owner: str, job_ids: Iterable[int]) -> int:
        """Results the client received: released (retained a while for ``get_result``)."""
        with self._lock:
            session = self._delivery.session(session_id, owner, self._clock(), create=False)
            acked = self._delivery.ack(session, job_ids)
            for job in acked:
                self._admission.release(session, job)
            self.backend.released(acked)
            self.counters["delivered"] += len(acked)
            self._delivery.forget_if_idle(session)
            return len(acked)

    # ---- worker role ----

    def register_worker(
        self,
        key: Key,
        *,
        owner: str = "",
        description: str = "",
        concurrency: int = 1,
        prefetch: int = 0,
        pid: int = 0,
        host: str = "",
        peer: str = "",
        wake: Callable[[], None] | None = None,
    ) -> Worker:
        if not key[0]:
            raise GridParamError("service_id is required")
        if not 1 <= concurrency <= 4096:
            raise GridParamError(f"concurrency must be in 1..4096 (got {concurrency})")
        if not 0 <= prefetch <= 65536:
            raise GridParamError(f"prefetch must be in 0..65536 (got {prefetch})")
        with self._lock:
            if self._closed:
                raise GridClosedError("grid is shut down")
            now = self._clock()
            worker = Worker(
                id=self._dispatch.new_worker_id(),
                key=key,
                owner=owner,
                description=description[:256],
                concurrency=concurrency,
                window=concurrency + prefetch,
                pid=pid,
                host=host[:256],
                peer=peer,
                since=now,
                last_seen=now,
            )
            if wake is not None:
                worker.wake = wake
            self.counters["workers_registered"] += 1
            self._dispatch.add(worker)
            return worker

    def take_for_worker(self, worker: Worker) -> WorkerOutput | None:
        """What to send the worker now (an empty output: nothing yet); None when its stream must end."""
        with self._lock:
            out = self._dispatch.take(worker)
            if out is not None and not out.stop and not out.jobs and self._closed:
                return None
            return out

    def worker_message(
        self, worker: Worker, results: Iterable[WorkerResult] = (), started: Iterable[int] = ()
    ) -> None:
        """Results (first), then starts, then a heartbeat's worth of liveness."""
        with self._lock:
            worker.last_seen = self._clock()
            for result in results:
                self._dispatch.complete(worker, result)
            self._dispatch.started(worker, started)
            if not self._closed:
                self._dispatch.dispatch(worker.key)

    def heartbeat(self, worker: Worker) -> None:
        with self._lock:
            worker.last_seen = self._clock()
            worker.heartbeats += 1

    def set_prefetch(self, worker: Worker, prefetch: int) -> None:
        with self._lock:
            worker.last_seen = self._clock()
            if not self._closed:
                self._dispatch.set_prefetch(worker, prefetch)

    def give_back(self, worker: Worker, job_ids: Iterable[int]) -> None:
        with self._lock:
            worker.last_seen = self._clock()
            if not self._closed:
                self._dispatch.give_back(worker, job_ids)

    def drain(self, worker: Worker) -> None:
        with self._lock:
            worker.last_seen = self._clock()
            self._dispatch.drain(worker)

    def stop_worker(self, worker_id: int) -> Worker:
        """Send the stop command to a worker (it drains and leaves)."""
        with self._lock:
            worker = self._dispatch.worker(worker_id)
            self._dispatch.stop(worker)
            return worker

    def worker_gone(self, worker: Worker, reason: str = "disconnected", *, lost: bool | None = None) -> None:
        """The worker's stream ended: jobs it ran are charged a loss and re-queued, the others re-queued.

        ``lost`` (counted in ``workers_lost``) defaults to: the worker left without draining first."""
        with self._lock:
            self._dispatch.gone(worker, reason, lost=lost)

    # ---- reaper ----

    def reap(self) -> None:
        """Drop silent workers, expire unacknowledged results and idle sessions (call it periodically)."""
        with self._lock:
            now = self._clock()
            timeout = self.limits.heartbeat_timeout
            stalled = self._last_reap is not None and now - self._last_reap > max(2 * self.reap_period, timeout / 2)
            self._last_reap = now
            if stalled:
                # The server itself was stalled (overloaded host, paused process): the workers' messages wait
                # unread in its buffers. Don't blame the workers: give each a fresh half timeout.
                for worker in self._dispatch.workers.values():
                    worker.last_seen = max(worker.last_seen, now - timeout / 2)
            for worker in self._dispatch.expired_workers(now):
                self._dispatch.gone(worker, f"no heartbeat for {timeout:g}s", lost=True)
            for job in self._delivery.expired_results(now):
                session = self._delivery.sessions.get(job.session)
                if session is not None:
                    self._admission.release(session, job)
                    self._delivery.drop(session, job)
                    self.backend.released((job,))
                    self.counters["expired_results"] += 1
                    self._delivery.forget_if_idle(session)
            for session in self._delivery.idle_sessions(now):
                self._end_session(session)
                self.counters["expired_sessions"] += 1

    @property
    def reap_period(self) -> float:
        """How often ``reap()`` should run to honour the heartbeat timeout and the expiry times."""
        limits = self.limits
        return max(0.01, min(limits.heartbeat_timeout / 4, limits.result_ttl / 4, limits.session_ttl / 4, 1.0))

    # ---- controller role ----

    def status(self) -> dict[str, Any]:
        with self._lock:
            status = grid_status(
                self._dispatch, self._delivery, self._admission, self.counters, self._closed, self._clock()
            )
            status["backend"] = self.backend.status()
            return status

