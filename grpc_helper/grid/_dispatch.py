"""Leases and dispatch: queues per (service_id, service_version), workers' windows, starts, losses.

A job is *leased* when put in a worker's window and *started* when the worker acknowledges running it: only
started runs count as attempts, so a lost worker's prefetched jobs go back to the queue without penalty. A job
leased to a worker that was lost is *suspect*: its next worker confirms its start before running it, so a job
that crashes its workers is counted exactly and fails after ``max_lost`` runs.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable

from grpc_helper import ResultCode
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import (
    TERMINAL,
    Dispatch,
    GridUnknownError,
    JobRecord,
    JobState,
    Key,
    Worker,
    WorkerOutput,
    WorkerResult,
    WorkerState,
)

#: finish(job, state, data, error, rc): complete a job (the scheduler routes it to its session).
Finish = Callable[[JobRecord, JobState, bytes, str, int], None]
#: requeued(job): a job goes back to the queue with new counts (failures, losses): the backend records them.
Requeued = Callable[[JobRecord], None]
#: hungry(): after a dispatch, workers still have room (a shared backend takes more jobs from its queue).
Hungry = Callable[[], None]


class Dispatcher:
    def __init__(
        self,
        limits: GridLimits,
        jobs: dict[int, JobRecord],
        counters: dict[str, int],
        finish: Finish,
        requeued: Requeued,
        hungry: Hungry | None = None,
    ) -> None:
        self.limits = limits
        self._requeued = requeued
        self._hungry = hungry
        self._jobs = jobs
        self._counters = counters
        self._finish = finish
        self._worker_ids = itertools.count(1)
        self.queues: dict[Key, deque[int]] = {}
        self.workers: dict[int, Worker] = {}
        self.by_key: dict[Key, dict[int, Worker]] = {}

    # ---- queues ----

    def enqueue(self, job: JobRecord, *, front: bool = False) -> None:
        job.state = JobState.QUEUED
        job.worker = None
        job.started = False
        queue = self.queues.setdefault(job.key, deque())
        if front:
            queue.appendleft(job.id)
        else:
            queue.append(job.id)

    def withdraw(self, job: JobRecord) -> None:
        """Take a job not completed out of the queue or its worker's window (cancel, expiry, shutdown)."""
        if job.state == JobState.QUEUED:
            queue = self.queues.get(job.key)
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(job.id)
                if not queue:
                    del self.queues[job.key]
        worker = self.workers.get(job.worker) if job.worker is not None else None
        if worker is not None and job.id in worker.outbox:
            worker.outbox.remove(job.id)
            worker.leases.discard(job.id)
        # A job already sent stays in its worker's window until its (ignored) result comes back.

    def depth(self, key: Key) -> int:
        return len(self.queues.get(key, ()))

    # ---- workers ----

    def add(self, worker: Worker) -> None:
        self.workers[worker.id] = worker
        self.by_key.setdefault(worker.key, {})[worker.id] = worker
        self.dispatch(worker.key)

    def new_worker_id(self) -> int:
        return next(self._worker_ids)

    def worker(self, worker_id: int) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise GridUnknownError(f"unknown worker {worker_id}")
        return worker

    def set_prefetch(self, worker: Worker, prefetch: int) -> None:
        if 0 <= prefetch <= 65536:
            worker.window = worker.concurrency + prefetch
            self.dispatch(worker.key)

    def take(self, worker: Worker) -> WorkerOutput | None:
        """What to send the worker now (empty: nothing yet); None when its stream must end."""
        if worker.state == WorkerState.GONE:
            return None
        if worker.stop_pending:
            worker.stop_pending = False
            return WorkerOutput(stop=True)
        limits = self.limits
        out = WorkerOutput()
        size = 0
        outbox = worker.outbox
        while outbox and len(out.jobs) < limits.stream_batch_count:
            job = self._jobs.get(outbox[0])
            if job is not None and out.jobs and size + len(job.payload or b"") > limits.stream_batch_bytes:
                break
            outbox.popleft()
            if job is None or job.state != JobState.RUNNING or job.worker != worker.id:
                continue  # cancelled or re-leased meanwhile
            payload = job.payload or b""
            size += len(payload)
            out.jobs.append(Dispatch(job.id, job.lease, payload, job.suspect))
        return out

    def started(self, worker: Worker, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job.worker == worker.id and job.state == JobState.RUNNING and not job.started:
                job.started = True
                job.attempts += 1

    def complete(self, worker: Worker, result: WorkerResult) -> None:
        """A worker's result; only the worker holding the job's current lease may complete it."""
        job = self._jobs.get(result.job_id)
        if result.job_id not in worker.leases:
            self._counters["refused"] += 1  # never leased to this stream: a forged or stale result
            return
        if job is None or job.state in TERMINAL or job.worker != worker.id:
            worker.leases.discard(result.job_id)
            self._counters["duplicates"] += 1  # cancelled or completed meanwhile: the first outcome stands
            return
        if job.lease != result.lease:
            self._counters["refused"] += 1  # not the lease this worker holds
            return
        worker.leases.discard(result.job_id)
        if not job.started:  # a result proves the run (its start message may be in the same batch)
            job.started = True
            job.attempts += 1
        if result.ok:
            worker.jobs_done += 1
            if len(result.data) > self.limits.max_payload_bytes:
                self._finish(
                    job,
                    JobState.FAILED,
                    b"",
                    f"result of {len(result.data)} bytes exceeds max_payload_bytes={self.limits.max_payload_bytes}",
                    ResultCode.ERROR_RESOURCE_EXHAUSTED,
                )
            else:
                self._finish(job, JobState.DONE, result.data, "", ResultCode.OK)
            return
        worker.jobs_failed += 1
        job.failures += 1
        if job.failures > self.limits.max_retries:
            self._finish(
                job, JobState.FAILED, b"", f"handler failed {job.failures} times: {result.error}", ResultCode.ERROR_CUSTOM
            )
        else:
            self._counters["retried"] += 1
            self.enqueue(job)
            self._requeued(job)

    def give_back(self, worker: Worker, job_ids: Iterable[int]) -> None:
        """Leased jobs the (draining) worker did not start: back to the front of the queue, no penalty."""
        for job_id in reversed(list(job_ids)):
            if job_id not in worker.leases:
                continue
            worker.leases.discard(job_id)
            job = self._jobs.get(job_id)
            if job is not None and job.state == JobState.RUNNING and job.worker == worker.id and not job.started:
                self.enqueue(job, front=True)
        self.dispatch(worker.key)

    def drain(self, worker: Worker) -> None:
        """The worker leaves soon: send it nothing more; jobs leased but not sent go back to the queue."""
        if worker.state == WorkerState.ACTIVE:
            worker.state = WorkerState.STOPPING
        self._return_outbox(worker)
        self.dispatch(worker.key)

    def stop(self, worker: Worker) -> None:
        worker.state = WorkerState.STOPPING
        worker.stop_pending = True
        self._return_outbox(worker)
        worker.wake()
        self.dispatch(worker.key)

    def gone(self, worker: Worker, reason: str, *, lost: bool | None) -> None:
        """The worker's stream ended: jobs it was running are charged a loss, the others go back untouched."""
        if worker.state == WorkerState.GONE:
            return
        if lost is None:
            lost = worker.state != WorkerState.STOPPING
        worker.state = WorkerState.GONE
        worker.reason = reason
        self.workers.pop(worker.id, None)
        by_key = self.by_key.get(worker.key)
        if by_key is not None:
            by_key.pop(worker.id, None)
            if not by_key:
                del self.by_key[worker.key]
        if lost:
            self._counters["workers_lost"] += 1
        for job_id in sorted(worker.leases, reverse=True):
            job = self._jobs.get(job_id)
            if job is None or job.state != JobState.RUNNING or job.worker != worker.id:
                continue
            job.suspect = job.suspect or lost
            if job.started:
                job.losses += 1
                self._counters["requeued"] += 1
                if job.losses >= self.limits.max_lost:
                    self._finish(
                        job,
                        JobState.FAILED,
                        b"",
                        f"its worker was lost {job.losses} times while running it (last: {reason}): "
                        "the job crashes or hangs its workers",
                        ResultCode.ERROR_RPC,
                    )
                    continue
                self.enqueue(job, front=True)
                self._requeued(job)
                continue
            self._counters["returned"] += 1
            self.enqueue(job, front=True)
        worker.leases.clear()
        worker.outbox.clear()
        worker.wake()
        self.dispatch(worker.key)

    def started_count(self, worker: Worker) -> int:
        """Jobs of the worker's window that it reported started."""
        jobs = self._jobs
        return sum(1 for i in worker.leases if (job := jobs.get(i)) is not None and job.started and job.worker == worker.id)

    def expired_workers(self, now: float) -> list[Worker]:
        timeout = self.limits.heartbeat_timeout
        return [w for w in self.workers.values() if now - w.last_seen >= timeout]

    # ---- dispatch ----

    def demand(self) -> dict[Key, int]:
        """Room in the active workers' windows, per key, beyond the jobs queued here."""
        out = {}
        for key, workers in self.by_key.items():
            room = sum(w.window - len(w.leases) for w in workers.values() if w.state == WorkerState.ACTIVE)
            room -= len(self.queues.get(key, ()))
            if room > 0:
                out[key] = room
        return out

    def dispatch(self, key: Key) -> None:
        """Lease queued jobs of `key` to its active workers, least loaded first, up to each one's window."""
        queue = self.queues.get(key)
        if not queue:
            if self._hungry is not None and any(
                w.state == WorkerState.ACTIVE and len(w.leases) < w.window for w in self.by_key.get(key, {}).values()
            ):
                self._hungry()
            return
        workers = [
            w for w in self.by_key.get(key, {}).values() if w.state == WorkerState.ACTIVE and len(w.leases) < w.window
        ]
        jobs = self._jobs
        while queue and workers:
            workers.sort(key=lambda w: len(w.leases))
            share = -(-len(queue) // len(workers))
            for worker in workers:
                room = min(worker.window - len(worker.leases), share)
                if room <= 0 or not queue:
                    continue
                was_empty = not worker.outbox
                for _ in range(min(room, len(queue))):
                    job = jobs[queue.popleft()]
                    job.state = JobState.RUNNING
                    job.worker = worker.id
                    job.lease += 1
                    job.started = False
                    worker.leases.add(job.id)
                    worker.outbox.append(job.id)
                if was_empty:
                    worker.wake()
            workers = [w for w in workers if len(w.leases) < w.window]
        if not queue:
            del self.queues[key]
            if workers and self._hungry is not None:
                self._hungry()

    def _return_outbox(self, worker: Worker) -> None:
        for job_id in reversed(worker.outbox):
            worker.leases.discard(job_id)
            job = self._jobs.get(job_id)
            if job is not None and job.state == JobState.RUNNING and job.worker == worker.id:
                self.enqueue(job, front=True)
        worker.outbox.clear()
