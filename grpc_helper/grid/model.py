"""Grid records: jobs, workers, client sessions and what flows between them and the scheduler."""

from __future__ import annotations

import enum
import threading
from collections import deque
from dataclasses import dataclass, field

from grpc_helper import ResultCode

Key = tuple[str, str]  # (service_id, service_version)


class JobState(enum.IntEnum):
    """Same values as the proto enum grpc_helper.grid.JobState."""

    QUEUED = 1
    RUNNING = 2
    DONE = 3
    FAILED = 4
    CANCELLED = 5


TERMINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class GridError(Exception):
    """Base of the scheduler's errors; the manager maps each subclass to a ResultCode."""


class GridLimitError(GridError):
    """A limit was reached (RESOURCE_EXHAUSTED)."""


class GridParamError(GridError):
    """Invalid parameter (INVALID_ARGUMENT)."""


class GridUnknownError(GridError):
    """Unknown job or worker (NOT_FOUND)."""


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
    attempt: int
    data: bytes


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """A worker's answer for one job."""

    job_id: int
    attempt: int
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
    key: Key
    payload: bytes | None
    state: JobState = JobState.QUEUED
    attempts: int = 0
    failures: int = 0
    losses: int = 0
    worker: int | None = None
    data: bytes = b""
    error: str = ""
    rc: int = ResultCode.OK
    delivered: bool = False

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
    description: str
    concurrency: int
    window: int
    pid: int
    host: str
    peer: str
    cond: threading.Condition
    since: float
    last_seen: float
    state: WorkerState = WorkerState.ACTIVE
    leases: set[int] = field(default_factory=set)
    outbox: deque[int] = field(default_factory=deque)
    stop_pending: bool = False
    jobs_done: int = 0
    jobs_failed: int = 0
    reason: str = ""


@dataclass(eq=False)
class Session:
    id: str
    cond: threading.Condition
    outbox: deque[int] = field(default_factory=deque)
    pending: int = 0  # jobs of this session not delivered yet
    stream: int = 0  # token of the open results stream (0: none)
