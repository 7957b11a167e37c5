"""Queue backends: where the scheduler's accepted jobs and undelivered results live beyond its memory.

The scheduler keeps its working state in memory (queues, leases, windows, sessions) and tells its backend each
durable fact as it happens, under its lock, in the order it happens:

- ``accepted(jobs)``: jobs admitted by a submit (the client gets their ids once ``committed``);
- ``updated(job)``: a job completed (done, failed or cancelled: its result), or went back to the queue with new
  attempt / failure / loss counts (retry, lost worker);
- ``released(jobs)``: jobs the server no longer holds (result acknowledged or expired); ``session_ended``: a
  session ended (its jobs not completed are cancelled, its results dropped).

Leases are not stored: a restart voids every lease, so jobs that were leased run again (at-least-once
execution). ``recover()`` hands the scheduler, at start, what the previous process left: jobs to queue again
and completed results to deliver. ``mark()`` / ``committed(mark)`` let the servicers wait until what was
recorded so far is stored (a submit is answered, a result sent, only then), whatever the backend.

``MemoryBackend`` stores nothing: everything is lost when the process exits. ``SqliteBackend`` (``_sqlite``)
stores in a state directory.

A *shared* backend (``RedisBackend``, ``_redis``) holds the queue itself, for several grid servers: a submit's
jobs go to the shared queue, not to this server's; the backend feeds this server's workers from it as they have
room (``Feed.demand`` / ``Feed.leased``), hands over the results other servers completed for this server's
sessions (``Feed.remote_results``), and a client that moves to this server brings its session along
(``adopt``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import JobRecord, Key


class Feed(Protocol):
    """What a shared backend calls on its scheduler (from its own threads)."""

    @property
    def limits(self) -> GridLimits:
        """The grid's limits (leases, quotas, time-to-live of the records)."""

    def status(self) -> dict[str, Any]:
        """This server's status (published for ``grid_status``)."""

    def local_sessions(self) -> list[str]:
        """The sessions this server holds (the backend keeps their records alive)."""

    def demand(self) -> dict[Key, int]:
        """Jobs this server's workers have room for, per queue (room left after the local queue)."""

    def leased(self, jobs: Sequence[JobRecord]) -> list[int]:
        """Jobs taken from the shared queue for this server's workers; returns the ids it refuses (it has
        completed or cancelled them, or it is closed): the backend gives those up."""

    def remote_results(self, jobs: Sequence[JobRecord]) -> None:
        """Completed jobs of this server's sessions (state, data, error, rc, attempts set), stored by another
        server (or refused by the backend)."""


class BackendUnavailable(Exception):
    """The backend's store does not answer (``open_backend``)."""


class Backend:
    """The backend interface; this base class is the ``memory`` backend's behaviour (nothing stored)."""

    #: Name shown by ``grid status``.
    name = "memory"
    #: Accepted jobs and undelivered results survive the server process.
    durable = False
    #: The queue is shared with other grid servers: submitted jobs are not queued locally (see ``Feed``).
    shared = False

    def attach(self, feed: Feed) -> None:
        """A shared backend starts feeding ``feed`` (called once, when the scheduler is ready)."""

    def job_ids(self, count: int) -> range | None:
        """``count`` new job ids unique across the servers sharing the backend; None: the scheduler's own."""
        return None

    def wanted(self) -> None:
        """This server's workers have room (a shared backend takes more jobs from the queue). Never waits."""

    async def adopt(self, session: str, owner: str) -> list[JobRecord] | None:
        """A results stream of ``session`` opens here: a shared backend makes this server the session's home and
        returns its held jobs (completed ones with their results, the others QUEUED). Raises
        ``GridUnknownError`` for another identity's session."""
        return None

    def grid_status(self) -> dict[str, Any] | None:
        """The whole grid (every server sharing the backend, every queue); None for a server-local backend.
        May do I/O: call it off the event loop."""
        return None

    def recover(self) -> list[JobRecord]:
        """Jobs left by the previous server process (queued ones, then completed ones), ids increasing."""
        return []

    def accepted(self, jobs: Sequence[JobRecord]) -> None:
        """Jobs just admitted (state QUEUED, payload set)."""

    def updated(self, job: JobRecord) -> None:
        """A job completed (its result), or was queued again with new counts."""

    def released(self, jobs: Iterable[JobRecord]) -> None:
        """Completed jobs no longer held (acknowledged, expired)."""

    def session_ended(self, session: str, jobs: Sequence[JobRecord]) -> None:
        """A session ended here (closed or expired): its jobs are no longer held, those not completed cancelled."""
        self.released(jobs)

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
