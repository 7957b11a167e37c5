"""Durable job records in SQLite (stdlib ``sqlite3``), beside the log files."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any


class State(IntEnum):
    """Job states (same values as the proto ``JobState``)."""

    UNKNOWN = 0
    RUNNING = 1
    EXITED = 2
    KILLED = 3
    FAILED_TO_START = 4
    LOST = 5


class StopReason(IntEnum):
    """Who ended a job (same values as the proto ``StopReason``)."""

    NONE = 0
    USER = 1
    OOM = 2
    SERVER = 3


@dataclass(frozen=True)
class LimitsSpec:
    """Resource limits; 0 means unlimited."""

    cpus: float = 0.0
    memory_bytes: int = 0
    io_read_bps: int = 0
    io_write_bps: int = 0
    pids: int = 0

    def any(self) -> bool:
        return any(v for v in asdict(self).values())


@dataclass(frozen=True)
class JobRecord:
    """Everything known about a job."""

    job_id: str
    owner: str
    command: tuple[str, ...]
    cwd: str
    state: State = State.RUNNING
    exit_code: int = 0
    signal: int = 0
    stopped_by: StopReason = StopReason.NONE
    error: str = ""
    pid: int = 0
    start_time: float = field(default_factory=time.time)
    end_time: float = 0.0
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    cgroup: str = ""
    boot_id: str = ""

    def update(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)


_COLUMNS = (
    "job_id", "owner", "command", "cwd", "state", "exit_code", "signal", "stopped_by", "error", "pid",
    "start_time", "end_time", "limits", "cgroup", "boot_id",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, owner TEXT NOT NULL, command TEXT NOT NULL, cwd TEXT NOT NULL,
    state INTEGER NOT NULL, exit_code INTEGER NOT NULL, signal INTEGER NOT NULL, stopped_by INTEGER NOT NULL,
    error TEXT NOT NULL, pid INTEGER NOT NULL, start_time REAL NOT NULL, end_time REAL NOT NULL,
    limits TEXT NOT NULL, cgroup TEXT NOT NULL, boot_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, job_id);
"""


def _to_row(r: JobRecord) -> tuple[Any, ...]:
    return (
        r.job_id, r.owner, json.dumps(list(r.command)), r.cwd, int(r.state), r.exit_code, r.signal,
        int(r.stopped_by), r.error, r.pid, r.start_time, r.end_time, json.dumps(asdict(r.limits)), r.cgroup,
        r.boot_id,
    )


def _from_row(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"], owner=row["owner"], command=tuple(json.loads(row["command"])), cwd=row["cwd"],
        state=State(row["state"]), exit_code=row["exit_code"], signal=row["signal"],
        stopped_by=StopReason(row["stopped_by"]), error=row["error"], pid=row["pid"], start_time=row["start_time"],
        end_time=row["end_time"], limits=LimitsSpec(**json.loads(row["limits"])), cgroup=row["cgroup"],
        boot_id=row["boot_id"],
    )


class JobStore:
    """Job records in ``<state_dir>/jobs.sqlite3``; safe to use from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def put(self, record: JobRecord) -> None:
        """Insert or replace a record."""
        marks = ",".join("?" * len(_COLUMNS))
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({marks})", _to_row(record))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _from_row(row) if row else None

    def records(self, owner: str | None = None) -> list[JobRecord]:
        """Records of ``owner`` (all when None), oldest first (UUIDv7 ids sort by time)."""
        with self._lock:
            if owner is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY job_id").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs WHERE owner = ? ORDER BY job_id", (owner,)).fetchall()
        return [_from_row(r) for r in rows]

    def running(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ?", (int(State.RUNNING),)).fetchall()
        return [_from_row(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
