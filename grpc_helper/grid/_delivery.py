"""Sessions and acknowledged delivery: results wait in their session until the client acknowledges them.

A result handed to a stream is *sent*, not delivered: if that stream ends before the client's ``ack``, the
next stream of the session sends it again (at least once on the wire; the client keeps the first copy).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable

from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import TERMINAL, GridParamError, GridUnknownError, JobRecord, Session

_MAX_SESSION_ID = 128


class Delivery:
    """Sessions, their undelivered results, and the acknowledged ones kept for ``get_result``."""

    def __init__(self, limits: GridLimits, jobs: dict[int, JobRecord]) -> None:
        self.limits = limits
        self._jobs = jobs
        self.sessions: dict[str, Session] = {}
        self._tokens = itertools.count(1)
        self._completions: deque[tuple[float, int]] = deque()  # (completed_at, job id), in completion order
        self.retained: OrderedDict[int, int] = OrderedDict()  # acknowledged job id -> result size
        self._retained_bytes = 0

    # ---- sessions ----

    def session(self, session_id: str, owner: str, now: float, *, create: bool) -> Session:
        """The caller's session; NOT_FOUND for another identity's (or, unless ``create``, an unknown) one."""
        if not session_id:
            raise GridParamError("session is required")
        if len(session_id) > _MAX_SESSION_ID:
            raise GridParamError(f"session ids are at most {_MAX_SESSION_ID} characters")
        session = self.sessions.get(session_id)
        if session is None:
            if not create:
                raise GridUnknownError(f"unknown session {session_id[:40]!r}")
            session = self.sessions[session_id] = Session(session_id, owner, now)
        elif session.owner != owner:
            raise GridUnknownError(f"unknown session {session_id[:40]!r}")
        session.last_active = now
        return session

    def forget_if_idle(self, session: Session) -> None:
        if session.stream == 0 and not session.jobs:
            self.sessions.pop(session.id, None)

    def idle_sessions(self, now: float) -> list[Session]:
        """Sessions without a stream and without calls for ``session_ttl``."""
        ttl = self.limits.session_ttl
        return [s for s in self.sessions.values() if s.stream == 0 and now - s.last_active >= ttl]

    # ---- results ----

    def completed(self, job: JobRecord, now: float) -> None:
        """A job completed: its result waits for the session's stream."""
        job.completed_at = now
        session = self.sessions.get(job.session)
        if session is None:
            return
        self._completions.append((now, job.id))
        session.outbox.append(job.id)
        if len(session.outbox) == 1 and session.stream:
            session.wake()

    def open_stream(self, session: Session) -> int:
        """A new stream replaces the previous one; results it sent without an ack will be sent again."""
        if session.stream:
            session.wake()  # the previous stream ends
        if session.sent:
            session.outbox.extendleft(sorted(session.sent, reverse=True))
            session.sent.clear()
        session.stream = next(self._tokens)
        return session.stream

    def close_stream(self, session: Session, token: int) -> bool:
        if session.stream != token:
            return False
        session.stream = 0
        if session.sent:
            session.outbox.extendleft(sorted(session.sent, reverse=True))
            session.sent.clear()
        return True

    def take(self, session: Session) -> list[JobRecord]:
        """The next batch for the session's stream (each result marked sent, not delivered)."""
        limits = self.limits
        batch: list[JobRecord] = []
        size = 0
        outbox = session.outbox
        while outbox and len(batch) < limits.stream_batch_count:
            job = self._jobs.get(outbox[0])
            if job is None or job.session != session.id:
                outbox.popleft()  # expired meanwhile
                continue
            if batch and size + len(job.data) > limits.stream_batch_bytes:
                break
            outbox.popleft()
            size += len(job.data)
            batch.append(job)
            session.sent.add(job.id)
        return batch

    def ack(self, session: Session, job_ids: Iterable[int]) -> list[JobRecord]:
        """Acknowledged results: returned (to release them), retained for ``get_result``."""
        acked = []
        unsent: set[int] = set()
        for job_id in dict.fromkeys(job_ids):
            job = self._jobs.get(job_id)
            if job is None or job.session != session.id or job.id not in session.jobs or job.state not in TERMINAL:
                continue
            if job_id in session.sent:
                session.sent.discard(job_id)
            else:
                unsent.add(job_id)  # acknowledged before being (re-)sent: don't send it again
            acked.append(job)
            self._retain(job)
        if unsent and session.outbox:
            session.outbox = deque(i for i in session.outbox if i not in unsent)
        return acked

    def expired_results(self, now: float) -> list[JobRecord]:
        """Completed results not acknowledged within ``result_ttl`` (still held: the caller drops them)."""
        ttl = self.limits.result_ttl
        out = []
        while self._completions and now - self._completions[0][0] >= ttl:
            _, job_id = self._completions.popleft()
            job = self._jobs.get(job_id)
            session = self.sessions.get(job.session) if job is not None else None
            if job is not None and session is not None and job.id in session.jobs and job.state in TERMINAL:
                out.append(job)
        return out

    def drop(self, session: Session, job: JobRecord) -> None:
        """Forget a result without delivering it (expired, or its session expired)."""
        session.sent.discard(job.id)
        self._jobs.pop(job.id, None)

    def _retain(self, job: JobRecord) -> None:
        self.retained[job.id] = len(job.data)
        self._retained_bytes += len(job.data)
        limits = self.limits
        while self.retained and (
            len(self.retained) > limits.max_retained or self._retained_bytes > limits.max_retained_bytes
        ):
            old_id, old_size = self.retained.popitem(last=False)
            self._retained_bytes -= old_size
            self._jobs.pop(old_id, None)
