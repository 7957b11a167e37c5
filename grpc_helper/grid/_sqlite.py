"""The ``sqlite`` backend: accepted jobs and undelivered results in ``STATE_DIR/grid.sqlite3`` (WAL).

Group commit: the scheduler's records (made under its lock, never waiting) pile up in a pending map, one entry
per job holding its latest row; a writer thread waits ``GROUP_COMMIT_WINDOW`` (2 ms) after the first record,
then stores the whole pile in one transaction, then the next pile, so the records of a whole burst cost one
commit. A job accepted and released within one pile is never written.

``journal_mode=WAL`` with ``synchronous=NORMAL``: a commit is written to the WAL file without fsync. What a
committed transaction guarantees: it survives the server process being killed (SIGKILL, crash, OOM) — the
data is in the operating system's page cache; a power loss or kernel crash may lose the last transactions
(those since the last WAL checkpoint's fsync) but never corrupts the database.

The state directory is private (0700) and locked (``flock`` on ``STATE_DIR/grid.lock``) while a server uses it:
a second server on the same directory is refused, naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from grpc_helper.grid._commit import GroupCommit
from grpc_helper.grid.model import TERMINAL, JobRecord, JobState
from grpc_helper.statedir import StateDirLock

DB_NAME = "grid.sqlite3"
#: Seconds the writer lets records gather after the first one before it takes the pile (bench: 2 ms beats 0).
GROUP_COMMIT_WINDOW = 0.002
LOCK_NAME = "grid.lock"
_SCHEMA = 1

_Row = tuple[Any, ...]

_COLUMNS = (
    "id, session, owner, service_id, service_version, payload, state, data, error, rc, attempts, failures, losses,"
    " suspect"
)
_CREATE = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, session TEXT NOT NULL, owner TEXT NOT NULL, service_id TEXT NOT NULL,
    service_version TEXT NOT NULL, payload BLOB, state INTEGER NOT NULL, data BLOB NOT NULL, error TEXT NOT NULL,
    rc INTEGER NOT NULL, attempts INTEGER NOT NULL, failures INTEGER NOT NULL, losses INTEGER NOT NULL,
    suspect INTEGER NOT NULL
);
PRAGMA user_version = {_SCHEMA};
"""
_INSERT = f"INSERT OR REPLACE INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE = (
    "UPDATE jobs SET payload = ?, state = ?, data = ?, error = ?, rc = ?, attempts = ?, failures = ?, losses = ?,"
    " suspect = ? WHERE id = ?"
)
_DELETE = "DELETE FROM jobs WHERE id = ?"


def default_state_dir() -> Path:
    """$GRPC_HELPER_GRID_DIR, else ~/.local/state/grpc-helper/grid."""
    env = os.environ.get("GRPC_HELPER_GRID_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "grpc-helper" / "grid"


def _row(job: JobRecord) -> _Row:
    # A running job is stored as queued: its lease dies with the process.
    state = int(job.state) if job.state in TERMINAL else int(JobState.QUEUED)
    return (
        job.id, job.session, job.owner, job.key[0], job.key[1], job.payload, state, job.data, job.error, job.rc,
        job.attempts, job.failures, job.losses, int(job.suspect),
    )


class SqliteBackend(GroupCommit[tuple[dict[int, "_Row | None"], set[int]]]):
    """Durable backend in a state directory; see the module's docstring for what survives what."""

    name = "sqlite"
    durable = True

    def __init__(self, state_dir: Path | str, *, window: float = GROUP_COMMIT_WINDOW) -> None:
        super().__init__(window, "grid-sqlite")
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        self._lock = StateDirLock(self.state_dir, name=LOCK_NAME, holder="grid server")
        self._lock.acquire()
        self.path = self.state_dir / DB_NAME
        db: sqlite3.Connection | None = None
        try:
            db = self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA):
                raise ValueError(f"{self.path}: schema version {version} is not supported (expected {_SCHEMA})")
            self._db.executescript(_CREATE)
        except BaseException:
            if db is not None:
                db.close()
            self._lock.release()
            raise
        self._pending: dict[int, _Row | None] = {}  # job id -> its latest row (None: delete it)
        self._new: set[int] = set()  # ids of the pending map not stored yet
        self.rows = 0
        self._start_writer()

    # ---- recovery ----

    def recover(self) -> list[JobRecord]:
        jobs = []
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id"):
            (job_id, session, owner, service, version, payload, state, data, error, rc, attempts, failures, losses,
             suspect) = row
            state = JobState(state)
            size = len(data) if state in TERMINAL else len(payload or b"")
            jobs.append(
                JobRecord(
                    job_id, session, owner, (service, version), payload, size, state=state, attempts=attempts,
                    suspect=bool(suspect), failures=failures, losses=losses, data=data, error=error, rc=rc,
                )
            )
        return jobs

    # ---- records (called under the scheduler's lock: never wait) ----

    def accepted(self, jobs: Sequence[JobRecord]) -> None:
        with self._cond:
            if self._closing:
                return
            for job in jobs:
                self._pending[job.id] = _row(job)
                self._new.add(job.id)
            self._record(len(jobs))

    def updated(self, job: JobRecord) -> None:
        with self._cond:
            if self._closing:
                return
            self._pending[job.id] = _row(job)
            self._record(1)

    def released(self, jobs: Iterable[JobRecord]) -> None:
        with self._cond:
            if self._closing:
                return
            count = 0
            for job in jobs:
                count += 1
                if job.id in self._new:
                    self._new.discard(job.id)
                    self._pending.pop(job.id, None)  # never stored: nothing to delete
                else:
                    self._pending[job.id] = None
            self._record(count)

    # ---- group commit ----

    def _has_pending(self) -> bool:
        return bool(self._pending)

    def _take(self) -> tuple[dict[int, _Row | None], set[int]]:
        pile = (self._pending, self._new)
        self._pending, self._new = {}, set()
        return pile

    def _put_back(self, pile: tuple[dict[int, _Row | None], set[int]]) -> None:
        pending, new = pile
        pending.update(self._pending)  # newer records win
        self._pending = pending
        self._new |= new

    def _where(self) -> str:
        return str(self.path)

    def _store(self, pile: tuple[dict[int, _Row | None], set[int]]) -> None:
        """One transaction: rows not stored yet inserted, stored ones updated (payload onwards), released deleted."""
        pending, new = pile
        if not pending:
            return
        inserts = []
        updates = []
        deletes = []
        for job_id, row in pending.items():
            if row is None:
                deletes.append((job_id,))
            elif job_id in new:
                inserts.append(row)
            else:
                updates.append((*row[5:], job_id))
        db = self._db
        db.execute("BEGIN")
        try:
            if inserts:
                db.executemany(_INSERT, inserts)
            if updates:
                db.executemany(_UPDATE, updates)
            if deletes:
                db.executemany(_DELETE, deletes)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.rows += len(pending)

    # ---- life cycle ----

    def _close_storage(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._lock.release()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "durable": self.durable,
            "path": str(self.path),
            "commits": self.commits,
            "rows_written": self.rows,
            "errors": self.errors,
            "pending": self.pending,
        }
