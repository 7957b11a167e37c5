"""The scheduler's side of a shared backend (``_backend.Feed``): jobs and results that come from the queue
other grid servers share, and sessions that move here with their clients."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from grpc_helper.grid._scheduler_core import SchedulerCore
from grpc_helper.grid.model import (
    TERMINAL,
    JobRecord,
    JobState,
    JobView,
    Key,
)


class SharedFeed(SchedulerCore):
    """``Feed`` methods (called from the backend's threads) and ``adopt`` (from a results stream)."""

    def adopt(self, session_id: str, owner: str, jobs: Sequence[JobRecord], waiting: Iterable[int]) -> list[JobView]:
        """The held jobs of a session whose stream opened here, from a shared backend (``Backend.adopt``, called
        after ``open_stream``): merged into the session; returns the views of the ``waiting`` jobs still unknown."""
        with self._lock:
            session = self._delivery.session(session_id, owner, self._clock(), create=True)
            now = self._clock()
            for job in jobs:
                mine = self._jobs.get(job.id)
                if mine is None:
                    self._jobs[job.id] = job
                    self._admission.hold(session, job)
                    if job.state in TERMINAL:
                        self._delivery.completed(job, now)
                elif mine.session == session.id and mine.id not in session.jobs:
                    self._admission.hold(session, mine)  # leased here for this server's workers: now held too
            return self._unknown(session, waiting)

    def local_sessions(self) -> list[str]:
        with self._lock:
            return list(self._delivery.sessions)

    def demand(self) -> dict[Key, int]:
        with self._lock:
            return {} if self._closed else self._dispatch.demand()

    def leased(self, jobs: Sequence[JobRecord]) -> list[int]:
        refused = []
        with self._lock:
            keys = set()
            for job in jobs:
                mine = self._jobs.get(job.id)
                if self._closed or (mine is not None and mine.state != JobState.QUEUED):
                    refused.append(job.id)  # completed or cancelled here meanwhile (or this server is closing)
                    continue
                if mine is not None:  # a job of this server's session: it waited as a placeholder
                    mine.payload, mine.attempts, mine.failures, mine.losses, mine.suspect = (
                        job.payload, job.attempts, job.failures, job.losses, job.suspect
                    )
                    job = mine
                else:
                    self._jobs[job.id] = job
                self._dispatch.enqueue(job)
                keys.add(job.key)
            for key in keys:
                self._dispatch.dispatch(key)
        return refused

    def remote_results(self, jobs: Sequence[JobRecord]) -> None:
        with self._lock:
            for done in jobs:
                job = self._jobs.get(done.id)
                if job is None:
                    session = self._delivery.sessions.get(done.session)
                    if session is None:
                        continue  # not a session of this server (any more)
                    # A session arriving here (``adopt``) whose job another server completed meanwhile.
                    job = JobRecord(done.id, session.id, session.owner, done.key, None, 0)
                    self._jobs[job.id] = job
                    self._admission.hold(session, job)
                elif job.state in TERMINAL:
                    continue  # completed here first
                job.attempts = max(job.attempts, done.attempts)
                self._dispatch.withdraw(job)
                self._finish(job, done.state, done.data, done.error, done.rc, store=False)

