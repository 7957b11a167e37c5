"""Grid records: jobs, workers, client sessions and what flows between them and the scheduler.

Plain data: the scheduler's parts (admission, delivery, dispatch) change them under the scheduler's lock.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from grpc_helper import ResultCode

Key = tuple[str, str]  # (service_id, service_version)


def _nothing() -> None:
    pass


class JobState(enum.IntEnum):
    """Same values as the proto enum grpc_helper.grid.JobState."""

    QUEUED = 1
    RUNNING = 2
    DONE = 3
    FAILED = 4
    CANCELLED = 5


TERMINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class GridError(Exception):
    """Base of the scheduler's errors; ``errors.rpc_error`` maps each subclass to a ResultCode."""


class GridLimitError(GridError):
    """A limit was reached (RESOURCE_EXHAUSTED)."""


class GridParamError(GridError):
    """Invalid parameter (INVALID_ARGUMENT)."""


class GridUnknownError(GridError):
    """Unknown job, session or worker, or one of another identity (NOT_FOUND)."""


class GridClosedError(GridError):
    """The grid is shut down (UNAVAILABLE / ERROR_STREAM_SHUTDOWN)."""


@dataclass(frozen=True, slots=True)
class JobView:
    """Snapshot of a job, as sent to clients."""

    job_id: int
    state: JobState
    data: bytes = b""
    error: str = ""
    attempts: int = 0
    rc: int = ResultCode.OK


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A job leased to a worker."""

    job_id: int
    lease: int
    data: bytes
    confirm_start: bool = False


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """A worker's answer for one job."""

    job_id: int
    lease: int
    ok: bool
    data: bytes = b""
    error: str = ""


@dataclass(slots=True)
class WorkerOutput:
    """What the server sends next on a worker stream."""

    jobs: list[Dispatch] = field(default_factory=list)
    stop: bool = False


@dataclass(eq=False, slots=True)
class JobRecord:
    id: int
    session: str
    owner: str
    key: Key
    payload: bytes | None
    size: int  # bytes counted by admission: the payload, then the result
    state: JobState = JobState.QUEUED
    lease: int = 0  # lease number (incremented at each dispatch)
    attempts: int = 0  # runs started (acknowledged by workers)
    started: bool = False  # the current lease's run was acknowledged
    suspect: bool = False  # was leased to a lost worker: its next run confirms its start first
    failures: int = 0
    losses: int = 0  # runs in progress when their worker was lost
    worker: int | None = None
    data: bytes = b""
    error: str = ""
    rc: int = ResultCode.OK
    completed_at: float = 0.0

    def view(self) -> JobView:
        return JobView(self.id, self.state, self.data, self.error, self.attempts, self.rc)


class WorkerState(enum.Enum):
    ACTIVE = "active"
    STOPPING = "stopping"
    GONE = "gone"


@dataclass(eq=False)
class Worker:
    """A registered worker (one bidirectional stream)."""

    id: int
    key: Key
    owner: str
    description: str
    concurrency: int
    window: int
    pid: int
    host: str
    peer: str
    since: float
    last_seen: float
    state: WorkerState = WorkerState.ACTIVE
    leases: set[int] = field(default_factory=set)
    outbox: deque[int] = field(default_factory=deque)
    stop_pending: bool = False
    jobs_done: int = 0
    jobs_failed: int = 0
    heartbeats: int = 0
    reason: str = ""
    #: Called (under the scheduler's lock) when there is something to send: jobs, or the stop command.
    wake: Callable[[], None] = _nothing


@dataclass(eq=False)
class Session:
    """A client session: its completed results wait here until acknowledged."""

    id: str
    owner: str
    last_active: float
    outbox: deque[int] = field(default_factory=deque)  # completed, not sent on the current stream
    sent: set[int] = field(default_factory=set)  # sent on the current stream, not acknowledged
    jobs: set[int] = field(default_factory=set)  # held: not completed, or completed and not acknowledged
    bytes: int = 0  # payload / result bytes of held jobs
    stream: int = 0  # token of the open results stream (0: none)
    #: Called (under the scheduler's lock) when results are ready for the open stream, or it must end.
    wake: Callable[[], None] = _nothing
