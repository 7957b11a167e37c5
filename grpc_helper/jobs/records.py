"""``Records``: the job store as the service uses it, surviving a full disk; and the purge of old jobs.

When job output fills the state directory's file system, records must still be written (a job's final status
above all): the state directory keeps 1 MiB aside (``StateDir.make_reserve``), given back at the first write
that fails; a record that still cannot be written stays in memory, is answered from there, and is written
with the next write that succeeds. Every method may block (SQLite, files): call them from a thread pool.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from grpc_helper.jobs.logs import remove
from grpc_helper.jobs.statedir import StateDir
from grpc_helper.jobs.store import JobRecord, JobStore, Page, StoreFull

RESERVE_BYTES = 1 << 20  # room kept for job records when job output fills the disk


class Records:
    """Job records in ``STATE_DIR/jobs.sqlite3`` (opened here), written even when the disk is full."""

    def __init__(self, state: StateDir, logger: logging.Logger) -> None:
        self.state = state
        self.logger = logger
        self.store = JobStore(state.path / "jobs.sqlite3")
        self._unsaved: dict[str, JobRecord] = {}  # records the full disk refused; retried with each write
        self._lock = threading.Lock()
        if not state.make_reserve(RESERVE_BYTES):
            logger.warning("the state directory's file system is full: no room kept for job records")

    def get(self, job_id: str) -> JobRecord | None:
        return self._unsaved.get(job_id) or self.store.get(job_id)

    def page(self, page: Page) -> list[JobRecord]:
        return [self._unsaved.get(r.job_id, r) for r in self.store.page(page)]

    def put(self, *records: JobRecord) -> None:
        """Write records; when the file system is full, give the reserved room back and try again (StoreFull)."""
        try:
            self.store.put_many(list(records))
        except StoreFull:
            if not self.state.drop_reserve():
                raise
            self.logger.warning("the state directory's file system is full: using the room kept for job records")
            self.store.put_many(list(records))

    def save(self, record: JobRecord) -> None:
        """Write a record (any thread); when the disk is full keep it in memory and retry with the next write."""
        with self._lock:
            pending = {**self._unsaved, record.job_id: record}
            try:
                self.put(*pending.values())
            except StoreFull:
                self._unsaved[record.job_id] = record
                self.logger.warning("disk full: record of job %s kept in memory until there is space", record.job_id)
                return
            self._unsaved.clear()

    def close(self) -> None:
        """Write what is still in memory (if the disk allows), then close the store."""
        with self._lock:
            if self._unsaved:
                try:
                    self.put(*self._unsaved.values())
                    self._unsaved.clear()
                except StoreFull:
                    self.logger.error("disk full: %d job record(s) lost (they will show as LOST)", len(self._unsaved))
        self.store.close()

    def purge(self, logs_dir: Path, older_than: float | None, keep: int | None) -> int:
        """Delete one batch of finished jobs past the retention limits, records and logs; returns how many."""
        removed = self.store.purge(older_than, keep)
        for job_id in removed:
            remove(logs_dir, job_id)
        return len(removed)
