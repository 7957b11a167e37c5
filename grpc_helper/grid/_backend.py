"""Queue backends: where the scheduler's accepted jobs and undelivered results live beyond its memory.

The scheduler keeps its working state in memory (queues, leases, windows, sessions) and tells its backend each
durable fact as it happens, under its lock, in the order it happens:

- ``accepted(jobs)``: jobs admitted by a submit (the client gets their ids once ``committed``);
- ``updated(job)``: a job completed (done, failed or cancelled: its result), or went back to the queue with new
  attempt / failure / loss counts (retry, lost worker);
- ``released(job_ids)``: jobs the server no longer holds (result acknowledged or expired, session ended).

Leases are not stored: a restart voids every lease, so jobs that were leased run again (at-least-once
execution). ``recover()`` hands the scheduler, at start, what the previous process left: jobs to queue again
and completed results to deliver. ``mark()`` / ``committed(mark)`` let the servicers wait until what was
recorded so far is stored (a submit is answered, a result sent, only then), whatever the backend.

``MemoryBackend`` stores nothing: everything is lost when the process exits. ``SqliteBackend`` (``_sqlite``)
stores in a state directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grpc_helper.grid.model import JobRecord


class Backend:
    """The backend interface; this base class is the ``memory`` backend's behaviour (nothing stored)."""

    #: Name shown by ``grid status``.
    name = "memory"
    #: Accepted jobs and undelivered results survive the server process.
    durable = False

    def recover(self) -> list[JobRecord]:
        """Jobs left by the previous server process (queued ones, then completed ones), ids increasing."""
        return []

    def accepted(self, jobs: Sequence[JobRecord]) -> None:
        """Jobs just admitted (state QUEUED, payload set)."""

    def updated(self, job: JobRecord) -> None:
        """A job completed (its result), or was queued again with new counts."""

    def released(self, job_ids: Iterable[int]) -> None:
        """Jobs no longer held (acknowledged, expired, their session ended)."""

    def mark(self) -> int:
        """A position in the stream of records: ``committed(mark)`` returns once everything before it is stored."""
        return 0

    async def committed(self, mark: int) -> None:
        """Wait until the records before ``mark`` are stored (at once for the memory backend)."""

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything recorded so far is stored; False on timeout."""
        return True

    def close(self) -> None:
        """Store what is pending, then release the storage (idempotent). Later records are ignored."""

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "durable": self.durable}


class MemoryBackend(Backend):
    """Jobs and results only in the server's memory: lost when it exits (tests, throwaway grids)."""
