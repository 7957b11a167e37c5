"""Grid scheduler: queues per (service_id, service_version), worker leases, retries, exactly-once delivery.

Pure logic under one lock: no I/O, no sleeps. Blocking calls (``next_results``, ``next_for_worker``) wait on
conditions that submit/complete/disconnect events notify. The only timed wait is the heartbeat reaper.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from grpc_helper import ResultCode
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import (
    TERMINAL,
    Dispatch,
    GridClosedError,
    GridLimitError,
    GridParamError,
    GridUnknownError,
    JobRecord,
    JobState,
    JobView,
    Key,
    Session,
    Worker,
    WorkerOutput,
    WorkerResult,
    WorkerState,
)


class Scheduler:
    """All grid state. Thread-safe; every public method takes the lock."""

    def __init__(self, limits: GridLimits | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or GridLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._reaper_cond = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)  # notified on worker/job events, for wait_until()
        self._ids = itertools.count(1)
        self._worker_ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._jobs: dict[int, JobRecord] = {}
        self._queues: dict[Key, deque[int]] = {}
        self._workers: dict[int, Worker] = {}
        self._by_key: dict[Key, dict[int, Worker]] = {}
        self._sessions: dict[str, Session] = {}
        self._retained: OrderedDict[int, int] = OrderedDict()  # delivered job id -> result size
        self._retained_bytes = 0
        self._held = 0  # jobs not delivered yet
        self._held_bytes = 0  # payload + undelivered result bytes
        self._closed = False
        self._reaper: threading.Thread | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "submitted",
                "done",
                "failed",
                "cancelled",
                "retried",
                "requeued",
                "duplicates",
                "rejected",
                "delivered",
                "workers_registered",
                "workers_lost",
            ),
            0,
        )

    # ---- life cycle ----

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Start the heartbeat reaper thread (stopped by ``close``)."""
        with self._lock:
            if self._reaper is None and not self._closed:
                self._reaper = threading.Thread(target=self._reap, name="grid-reaper", daemon=True)
                self._reaper.start()

    def close(self, reason: str = "grid shut down") -> int:
        """Fail every job not completed yet, stop workers, end result streams once flushed. Returns jobs failed."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            failed = 0
            for job in list(self._jobs.values()):
                if job.state not in TERMINAL:
                    self._discard_lease(job)
                    self._finish(job, JobState.FAILED, error=reason, rc=ResultCode.ERROR_STREAM_SHUTDOWN)
                    failed += 1
            self._queues.clear()
            for worker in self._workers.values():
                worker.state = WorkerState.STOPPING
                worker.stop_pending = True
                worker.outbox.clear()
                worker.cond.notify_all()
            for session in self._sessions.values():
                session.cond.notify_all()
            self._reaper_cond.notify_all()
            reaper, self._reaper = self._reaper, None
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout=5)
        return failed

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Wait until ``predicate(status())`` holds (re-checked at each worker/job event); False on timeout."""
        end = time.monotonic() + timeout
        with self._lock:
            while not predicate(self._status()):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def pending_jobs(self) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.state not in TERMINAL)

    # ---- client role ----

    def submit(self, session_id: str, key: Key, payloads: Sequence[bytes]) -> list[int]:
        """Queue one job per payload; returns their ids. Raises GridLimitError past the limits."""
        limits = self.limits
        if not session_id:
            raise GridParamError("session is required")
        if not key[0]:
            raise GridParamError("service_id is required")
        if not payloads:
            raise GridParamError("no payload to submit")
        if len(payloads) > limits.max_batch:
            raise GridLimitError(f"batch of {len(payloads)} jobs exceeds max_batch={limits.max_batch}")
        size = 0
        for payload in payloads:
            if len(payload) > limits.max_payload_bytes:
                raise GridLimitError(
                    f"payload of {len(payload)} bytes exceeds max_payload_bytes={limits.max_payload_bytes}"
                )
            size += len(payload)
        with self._lock:
            if self._closed:
                raise GridClosedError("grid is shut down")
            if self._held + len(payloads) > limits.max_jobs:
                self.counters["rejected"] += len(payloads)
                raise GridLimitError(
                    f"grid is full: {self._held} jobs held, {len(payloads)} more exceed max_jobs={limits.max_jobs}"
                    " (wait for results, then retry)"
                )
            if self._held_bytes + size > limits.max_bytes:
                self.counters["rejected"] += len(payloads)
                raise GridLimitError(
                    f"grid is full: {self._held_bytes} bytes held, {size} more exceed max_bytes={limits.max_bytes}"
                    " (wait for results, then retry)"
                )
            session = self._session(session_id)
            queue = self._queues.setdefault(key, deque())
            ids = []
            for payload in payloads:
                job = JobRecord(next(self._ids), session_id, key, payload)
                self._jobs[job.id] = job
                queue.append(job.id)
                ids.append(job.id)
            session.pending += len(ids)
            self._held += len(ids)
            self._held_bytes += size
            self.counters["submitted"] += len(ids)
            self._dispatch(key)
            self._changed.notify_all()
            return ids

    def get_result(self, job_id: int, session_id: str = "") -> JobView:
        """State of a job; a completed result fetched here counts as delivered (the stream won't repeat it)."""
        with self._lock:
            job = self._job(job_id, session_id)
            if job.state in TERMINAL and not job.delivered:
                session = self._sessions.get(job.session)
                if session is not None and job.id in session.outbox:
                    session.outbox.remove(job.id)
                self._deliver(job)
                self._changed.notify_all()
            return job.view()

    def cancel(self, job_id: int, session_id: str = "") -> JobView:
        """Cancel a job not completed yet (a running job's late result is ignored)."""
        with self._lock:
            job = self._job(job_id, session_id)
            if job.state == JobState.QUEUED:
                queue = self._queues.get(job.key)
                if queue is not None and job.id in queue:
                    queue.remove(job.id)
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                self._discard_lease(job, only_unsent=True)
                self._finish(job, JobState.CANCELLED, error="cancelled by client", rc=ResultCode.ERROR_CANCELLED)
            return job.view()

    def open_stream(self, session_id: str) -> int:
        """Attach a results stream to a session (replacing any previous one); returns its token."""
        with self._lock:
            if self._closed:
                raise GridClosedError("grid is shut down")
            session = self._session(session_id)
            session.stream = next(self._tokens)
            session.cond.notify_all()
            return session.stream

    def close_stream(self, session_id: str, token: int) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.stream == token:
                session.stream = 0
                session.cond.notify_all()
                self._forget_session(session)

    def next_results(self, session_id: str, token: int, timeout: float | None = None) -> list[JobView] | None:
        """Block until results are ready for the stream; None when the stream is replaced or closed.

        Raises GridClosedError once the grid is shut down and every result has been handed over.
        Returns [] when ``timeout`` expires.
        """
        limits = self.limits
        with self._lock:
            while True:
                session = self._sessions.get(session_id)
                if session is None or session.stream != token:
                    return None
                if session.outbox:
                    batch: list[JobView] = []
                    size = 0
                    while session.outbox and len(batch) < limits.stream_batch_count:
                        job = self._jobs[session.outbox[0]]
                        if batch and size + len(job.data) > limits.stream_batch_bytes:
                            break
                        session.outbox.popleft()
                        size += len(job.data)
                        batch.append(job.view())
                        self._deliver(job)
                    self._changed.notify_all()
                    return batch
                if self._closed:
                    raise GridClosedError("grid is shut down")
                if not session.cond.wait(timeout) and timeout is not None:
                    return []

    # ---- worker role ----

    def register_worker(
        self,
        key: Key,
        *,
        description: str = "",
        concurrency: int = 1,
        prefetch: int = 0,
        pid: int = 0,
        host: str = "",
        peer: str = "",
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
                id=next(self._worker_ids),
                key=key,
                description=description,
                concurrency=concurrency,
                window=concurrency + prefetch,
                pid=pid,
                host=host,
                peer=peer,
                cond=threading.Condition(self._lock),
                since=now,
                last_seen=now,
            )
            self._workers[worker.id] = worker
            self._by_key.setdefault(key, {})[worker.id] = worker
            self.counters["workers_registered"] += 1
            self._reaper_cond.notify_all()
            self._changed.notify_all()
            self._dispatch(key)
            return worker

    def next_for_worker(self, worker: Worker, timeout: float | None = None) -> WorkerOutput | None:
        """Block until there are jobs or a command for the worker; None when its stream must end."""
        limits = self.limits
        with self._lock:
            while True:
                if worker.state == WorkerState.GONE:
                    return None
                if worker.stop_pending:
                    worker.stop_pending = False
                    return WorkerOutput(stop=True)
                if self._closed:
                    return None
                out = WorkerOutput()
                size = 0
                while worker.outbox and len(out.jobs) < limits.stream_batch_count:
                    job = self._jobs.get(worker.outbox[0])
                    if job is not None and out.jobs and size + len(job.payload or b"") > limits.stream_batch_bytes:
                        break
                    worker.outbox.popleft()
                    if job is None or job.state != JobState.RUNNING or job.worker != worker.id:
                        continue  # cancelled or re-leased meanwhile
                    payload = job.payload or b""
                    size += len(payload)
                    out.jobs.append(Dispatch(job.id, job.attempts, payload))
                if out.jobs:
                    return out
                if not worker.cond.wait(timeout) and timeout is not None:
                    return WorkerOutput()

    def worker_results(self, worker: Worker, results: Iterable[WorkerResult]) -> None:
        with self._lock:
            worker.last_seen = self._clock()
            for result in results:
                self._complete(worker, result)
            self._dispatch(worker.key)
            self._changed.notify_all()

    def heartbeat(self, worker: Worker) -> None:
        with self._lock:
            worker.last_seen = self._clock()

    def give_back(self, worker: Worker, job_ids: Iterable[int]) -> None:
        """Jobs leased to a (draining) worker that it did not start: back to the front of the queue."""
        with self._lock:
            worker.last_seen = self._clock()
            for job_id in reversed(list(job_ids)):  # appendleft: keep their order at the head of the queue
                job = self._jobs.get(job_id)
                worker.leases.discard(job_id)
                if job is not None and job.state == JobState.RUNNING and job.worker == worker.id:
                    self._requeue(job, front=True)
            self._dispatch(worker.key)
            self._changed.notify_all()

    def drain(self, worker: Worker) -> None:
        """The worker leaves soon: send it nothing more; jobs leased but not sent yet go back to the queue."""
        with self._lock:
            worker.last_seen = self._clock()
            if worker.state == WorkerState.ACTIVE:
                worker.state = WorkerState.STOPPING
            self._return_outbox(worker)
            self._dispatch(worker.key)
            self._changed.notify_all()

    def stop_worker(self, worker_id: int) -> Worker:
        """Send the stop command to a worker (it drains and leaves)."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                raise GridUnknownError(f"unknown worker {worker_id}")
            worker.state = WorkerState.STOPPING
            worker.stop_pending = True
            self._return_outbox(worker)
            worker.cond.notify_all()
            self._dispatch(worker.key)
            self._changed.notify_all()
            return worker

    def worker_gone(self, worker: Worker, reason: str = "disconnected", *, lost: bool | None = None) -> None:
        """The worker's stream ended: its leased jobs go back to the queue and run elsewhere.

        ``lost`` (counted in ``workers_lost``) defaults to: the worker left without draining first.
        """
        with self._lock:
            self._worker_gone(worker, reason, lost=lost)

    # ---- controller role ----

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        now = self._clock()
        running: dict[Key, int] = {}
        for worker in self._workers.values():
            running[worker.key] = running.get(worker.key, 0) + len(worker.leases)
        keys = sorted(set(self._queues) | set(running) | {k for k, ws in self._by_key.items() if ws})
        return {
            "workers": [
                {
                    "id": w.id,
                    "description": w.description,
                    "service_id": w.key[0],
                    "service_version": w.key[1],
                    "state": w.state.value,
                    "concurrency": w.concurrency,
                    "window": w.window,
                    "in_flight": len(w.leases),
                    "jobs_done": w.jobs_done,
                    "jobs_failed": w.jobs_failed,
                    "pid": w.pid,
                    "host": w.host,
                    "peer": w.peer,
                    "connected_s": round(now - w.since, 3),
                    "last_seen_s": round(now - w.last_seen, 3),
                }
                for w in self._workers.values()
            ],
            "queues": [
                {
                    "service_id": k[0],
                    "service_version": k[1],
                    "depth": len(self._queues.get(k, ())),
                    "running": running.get(k, 0),
                    "workers": len(self._by_key.get(k, {})),
                }
                for k in keys
            ],
            "counters": dict(self.counters),
            "held": {"jobs": self._held, "bytes": self._held_bytes, "retained": len(self._retained)},
            "sessions": len(self._sessions),
            "closed": self._closed,
        }

    # ---- internals (lock held) ----

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = Session(session_id, threading.Condition(self._lock))
        return session

    def _forget_session(self, session: Session) -> None:
        if session.stream == 0 and session.pending == 0 and not session.outbox:
            self._sessions.pop(session.id, None)

    def _job(self, job_id: int, session_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None or (session_id and job.session != session_id):
            raise GridUnknownError(f"unknown job {job_id} (never submitted by this session, or result dropped)")
        return job

    def _dispatch(self, key: Key) -> None:
        """Lease queued jobs of `key` to its active workers, least loaded first, up to each one's window."""
        queue = self._queues.get(key)
        if not queue:
            return
        workers = [
            w for w in self._by_key.get(key, {}).values() if w.state == WorkerState.ACTIVE and len(w.leases) < w.window
        ]
        while queue and workers:
            workers.sort(key=lambda w: len(w.leases))
            share = -(-len(queue) // len(workers))
            for worker in workers:
                room = min(worker.window - len(worker.leases), share)
                if room <= 0 or not queue:
                    continue
                was_empty = not worker.outbox
                for _ in range(min(room, len(queue))):
                    job = self._jobs[queue.popleft()]
                    job.state = JobState.RUNNING
                    job.worker = worker.id
                    job.attempts += 1
                    worker.leases.add(job.id)
                    worker.outbox.append(job.id)
                if was_empty:
                    worker.cond.notify_all()
            workers = [w for w in workers if len(w.leases) < w.window]
        if not queue:
            del self._queues[key]

    def _complete(self, worker: Worker, result: WorkerResult) -> None:
        worker.leases.discard(result.job_id)
        job = self._jobs.get(result.job_id)
        if job is None or job.state in TERMINAL:
            self.counters["duplicates"] += 1  # ran twice, or cancelled: the first outcome stands
            if result.ok:
                worker.jobs_done += 1
            return
        if result.ok:
            worker.jobs_done += 1
            if job.worker is not None and job.worker != worker.id:
                self._discard_lease(job, only_unsent=False)
            if len(result.data) > self.limits.max_payload_bytes:
                self._finish(
                    job,
                    JobState.FAILED,
                    error=f"result of {len(result.data)} bytes exceeds max_payload_bytes="
                    f"{self.limits.max_payload_bytes}",
                    rc=ResultCode.ERROR_RESOURCE_EXHAUSTED,
                )
            else:
                self._finish(job, JobState.DONE, data=result.data)
            return
        worker.jobs_failed += 1
        if job.worker != worker.id or job.attempts != result.attempt:
            return  # a stale attempt failed while another one runs: let that one decide
        job.failures += 1
        if job.failures > self.limits.max_retries:
            self._finish(
                job, JobState.FAILED, error=f"handler failed {job.failures} times: {result.error}", rc=ResultCode.ERROR_CUSTOM
            )
        else:
            self.counters["retried"] += 1
            self._requeue(job, front=False)

    def _requeue(self, job: JobRecord, *, front: bool) -> None:
        job.state = JobState.QUEUED
        job.worker = None
        queue = self._queues.setdefault(job.key, deque())
        if front:
            queue.appendleft(job.id)
        else:
            queue.append(job.id)

    def _discard_lease(self, job: JobRecord, only_unsent: bool = False) -> None:
        """Drop the job from its worker's outbox; free the lease unless the worker may already run it."""
        worker = self._workers.get(job.worker) if job.worker is not None else None
        if worker is None:
            return
        if job.id in worker.outbox:
            worker.outbox.remove(job.id)
            worker.leases.discard(job.id)
        elif not only_unsent:
            worker.leases.discard(job.id)

    def _return_outbox(self, worker: Worker) -> None:
        for job_id in reversed(worker.outbox):
            worker.leases.discard(job_id)
            job = self._jobs.get(job_id)
            if job is not None and job.state == JobState.RUNNING and job.worker == worker.id:
                self._requeue(job, front=True)
        worker.outbox.clear()

    def _worker_gone(self, worker: Worker, reason: str, *, lost: bool | None) -> None:
        if worker.state == WorkerState.GONE:
            return
        if lost is None:
            lost = worker.state != WorkerState.STOPPING
        worker.state = WorkerState.GONE
        worker.reason = reason
        self._workers.pop(worker.id, None)
        by_key = self._by_key.get(worker.key)
        if by_key is not None:
            by_key.pop(worker.id, None)
            if not by_key:
                del self._by_key[worker.key]
        if lost:
            self.counters["workers_lost"] += 1
        for job_id in sorted(worker.leases, reverse=True):
            job = self._jobs.get(job_id)
            if job is None or job.state != JobState.RUNNING or job.worker != worker.id:
                continue
            job.losses += 1
            self.counters["requeued"] += 1
            if job.losses > self.limits.max_requeues:
                self._finish(job, JobState.FAILED, error=f"worker lost {job.losses} times ({reason})", rc=ResultCode.ERROR_RPC)
            else:
                self._requeue(job, front=True)
        worker.leases.clear()
        worker.outbox.clear()
        worker.cond.notify_all()
        self._dispatch(worker.key)
        self._changed.notify_all()

    def _finish(self, job: JobRecord, state: JobState, *, data: bytes = b"", error: str = "", rc: int = ResultCode.OK) -> None:
        job.state = state
        job.worker = None
        self._held_bytes += len(data) - len(job.payload or b"")
        job.payload = None
        job.data = data
        job.error = error
        job.rc = rc
        self._changed.notify_all()
        self.counters[{JobState.DONE: "done", JobState.FAILED: "failed"}.get(state, "cancelled")] += 1
        session = self._session(job.session)
        session.outbox.append(job.id)
        if len(session.outbox) == 1:
            session.cond.notify_all()

    def _deliver(self, job: JobRecord) -> None:
        job.delivered = True
        self._held -= 1
        self._held_bytes -= len(job.data)
        self.counters["delivered"] += 1
        session = self._sessions.get(job.session)
        if session is not None:
            session.pending -= 1
            self._forget_session(session)
        self._retained[job.id] = len(job.data)
        self._retained_bytes += len(job.data)
        limits = self.limits
        while self._retained and (
            len(self._retained) > limits.max_retained or self._retained_bytes > limits.max_retained_bytes
        ):
            old_id, old_size = self._retained.popitem(last=False)
            self._retained_bytes -= old_size
            self._jobs.pop(old_id, None)

    def _reap(self) -> None:
        """Drop workers silent for longer than heartbeat_timeout (hung, or gone without closing the socket)."""
        timeout = self.limits.heartbeat_timeout
        with self._lock:
            while not self._closed:
                now = self._clock()
                next_check = now + timeout
                for worker in list(self._workers.values()):
                    deadline = worker.last_seen + timeout
                    if deadline <= now:
                        self._worker_gone(worker, f"no heartbeat for {timeout:g}s", lost=True)
                    else:
                        next_check = min(next_check, deadline)
                self._reaper_cond.wait(max(next_check - now, 0.01))
