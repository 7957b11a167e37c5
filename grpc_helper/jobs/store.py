"""Durable job records in SQLite (stdlib ``sqlite3``), beside the log files: pages, filters, purge.

Indexes make every page a range scan whatever the table size: ``(owner, job_id)``, ``(state, job_id)`` and
``(owner, state, job_id)`` beside the primary key, so a page of 100 among a million records costs the same
as among ten; ``end_time`` makes the purge by age a range scan too.
"""

from __future__ import annotations

import json
import os
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
    LOG_LIMIT = 4
    NO_SPACE = 5


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
    user: str = ""
    namespaces: str = ""

    def update(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)


_COLUMNS = (
    "job_id", "owner", "command", "cwd", "state", "exit_code", "signal", "stopped_by", "error", "pid",
    "start_time", "end_time", "limits", "cgroup", "boot_id", "user", "namespaces",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, owner TEXT NOT NULL, command TEXT NOT NULL, cwd TEXT NOT NULL,
    state INTEGER NOT NULL, exit_code INTEGER NOT NULL, signal INTEGER NOT NULL, stopped_by INTEGER NOT NULL,
    error TEXT NOT NULL, pid INTEGER NOT NULL, start_time REAL NOT NULL, end_time REAL NOT NULL,
    limits TEXT NOT NULL, cgroup TEXT NOT NULL, boot_id TEXT NOT NULL,
    user TEXT NOT NULL DEFAULT '', namespaces TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, job_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, job_id);
CREATE INDEX IF NOT EXISTS jobs_owner_state ON jobs (owner, state, job_id);
CREATE INDEX IF NOT EXISTS jobs_end ON jobs (end_time);
"""
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


class StoreFull(Exception):
    """The file system holding the records is full (the record was not written)."""


def _is_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(error)


@dataclass(frozen=True)
class Page:
    """Which records to list: a cursor (``after``: the last id of the previous page), filters, order."""

    size: int = 100
    after: str = ""
    owner: str | None = None
    states: tuple[State, ...] = ()
    newest_first: bool = False

    def more(self) -> Page:
        """The same page with one more record (to know whether there is a next page)."""
        return replace(self, size=self.size + 1)


def _to_row(r: JobRecord) -> tuple[Any, ...]:
    return (
        r.job_id, r.owner, json.dumps(list(r.command)), r.cwd, int(r.state), r.exit_code, r.signal,
        int(r.stopped_by), r.error, r.pid, r.start_time, r.end_time, json.dumps(asdict(r.limits)), r.cgroup,
        r.boot_id, r.user, r.namespaces,
    )


def _from_row(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"], owner=row["owner"], command=tuple(json.loads(row["command"])), cwd=row["cwd"],
        state=State(row["state"]), exit_code=row["exit_code"], signal=row["signal"],
        stopped_by=StopReason(row["stopped_by"]), error=row["error"], pid=row["pid"], start_time=row["start_time"],
        end_time=row["end_time"], limits=LimitsSpec(**json.loads(row["limits"])), cgroup=row["cgroup"],
        boot_id=row["boot_id"], user=row["user"], namespaces=row["namespaces"],
    )


class JobStore:
    """Job records in ``<state_dir>/jobs.sqlite3``; safe to use from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # private from the start
        os.chmod(path, 0o600)  # SQLite gives its -wal and -shm files the database file's mode
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            known = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for column in ("user", "namespaces"):  # records written by an earlier version
                if column not in known:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")

    def put(self, record: JobRecord) -> None:
        """Insert or replace a record; raises :class:`StoreFull` when the file system is full."""
        self.put_many([record])

    def put_many(self, records: list[JobRecord]) -> None:
        """Insert or replace records in one transaction (:class:`StoreFull` when the file system is full)."""
        marks = ",".join("?" * len(_COLUMNS))
        sql = f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({marks})"
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(sql, [_to_row(r) for r in records])
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if _is_full(e):
                    raise StoreFull(str(e)) from None
                raise

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _from_row(row) if row else None

    def records(self, owner: str | None = None) -> list[JobRecord]:
        """Every record of ``owner`` (all when None), oldest first (UUIDv7 ids sort by time)."""
        return self.page(Page(size=-1, owner=owner))

    def page(self, page: Page) -> list[JobRecord]:
        """Up to ``page.size`` records (-1: all) after the cursor, in id order (UUIDv7: creation order)."""
        where: list[str] = []
        params: list[Any] = []
        if page.owner is not None:
            where.append("owner = ?")
            params.append(page.owner)
        if page.states:
            where.append(f"state IN ({','.join('?' * len(page.states))})")
            params.extend(int(s) for s in page.states)
        if page.after:
            where.append("job_id < ?" if page.newest_first else "job_id > ?")
            params.append(page.after)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY job_id DESC" if page.newest_first else " ORDER BY job_id"
        sql += " LIMIT ?"
        params.append(page.size)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_from_row(r) for r in rows]

    def purge(self, older_than: float | None, keep: int | None, batch: int = 10_000) -> list[str]:
        """Delete up to ``batch`` finished records: those that ended before ``older_than`` (Unix time) and those
        beyond the ``keep`` most recent finished ones. Returns their ids (call again while it returns some)."""
        finished = int(State.RUNNING)
        ids: list[str] = []
        with self._lock:
            if older_than is not None:
                ids += [r[0] for r in self._db.execute(
                    "SELECT job_id FROM jobs WHERE state != ? AND end_time < ? LIMIT ?", (finished, older_than, batch)
                )]
            if keep is not None and len(ids) < batch:
                ids += [r[0] for r in self._db.execute(
                    "SELECT job_id FROM jobs WHERE state != ? ORDER BY job_id DESC LIMIT ? OFFSET ?",
                    (finished, batch - len(ids), keep),
                )]
            ids = sorted(set(ids))
            if ids:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM jobs WHERE job_id = ?", [(i,) for i in ids])
                self._db.execute("COMMIT")
        return ids

    def running(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ?", (int(State.RUNNING),)).fetchall()
        return [_from_row(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
