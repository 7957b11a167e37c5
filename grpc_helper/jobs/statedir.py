"""The state directory: private (0700, files 0600) and owned by one server at a time (an exclusive ``flock``).

A second server on the same directory would take the first one's running jobs for leftovers of a crash and
kill them; :meth:`StateDir.acquire` refuses instead, naming the holder's pid (the core's ``StateDirLock`` on
``STATE_DIR/lock``: released by the kernel when the holder dies).

``STATE_DIR/reserve`` is ballast: space set aside while there is some, given back when the file system is
full so that job records (their final status above all) can still be written.
"""

from __future__ import annotations

import os
from pathlib import Path

from grpc_helper.jobs.sandbox import make_private
from grpc_helper.statedir import StateDirBusy, StateDirLock

__all__ = ["LOCK_NAME", "RESERVE_NAME", "StateDir", "StateDirBusy"]

LOCK_NAME = "lock"
RESERVE_NAME = "reserve"


class StateDir:
    """``STATE_DIR`` with ``logs/``, made private, and its exclusive lock (held until :meth:`release`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().resolve()
        self.logs = self.path / "logs"
        self._lock = StateDirLock(self.path, name=LOCK_NAME, holder="jobs server")

    def acquire(self) -> None:
        """Create the directories (0700; existing ones are made private; one owned by another user is refused),
        take the lock or raise :class:`StateDirBusy` naming the holder, then record our pid in the lock file."""
        for d in (self.path, self.logs):
            try:
                make_private(d)
            except PermissionError as e:  # owned by another user: they could open it again whatever its mode
                raise StateDirBusy(f"state directory refused: {e.strerror}") from None
        self._lock.acquire()

    @property
    def held(self) -> bool:
        return self._lock.held

    def release(self) -> None:
        """Drop the lock."""
        self._lock.release()

    def make_reserve(self, size: int) -> bool:
        """Set ``size`` bytes aside (False when there is not enough space)."""
        path = self.path / RESERVE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            return False
        os.close(fd)
        return True

    def drop_reserve(self) -> bool:
        """Give the reserved space back (False when there was none left)."""
        try:
            (self.path / RESERVE_NAME).unlink()
        except FileNotFoundError:
            return False
        return True

    def free_bytes(self) -> int:
        """Space left for unprivileged writers on the directory's file system."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize
