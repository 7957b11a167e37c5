"""The state directory: private (0700, files 0600) and owned by one server at a time (an exclusive ``flock``).

A second server on the same directory would take the first one's running jobs for leftovers of a crash and
kill them; :meth:`StateDir.acquire` refuses instead, naming the holder's pid. The lock is an ``flock`` on
``STATE_DIR/lock``: the kernel releases it when the holder dies, so a crash never leaves a stale lock behind.

``STATE_DIR/reserve`` is ballast: space set aside while there is some, given back when the file system is
full so that job records (their final status above all) can still be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from grpc_helper.jobs.sandbox import make_private

LOCK_NAME = "lock"
RESERVE_NAME = "reserve"


class StateDirBusy(Exception):
    """The state directory cannot be used: another process holds it (the message names it), or another user
    owns it."""


class StateDir:
    """``STATE_DIR`` with ``logs/``, made private, and its exclusive lock (held until :meth:`release`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().resolve()
        self.logs = self.path / "logs"
        self._fd = -1

    def acquire(self) -> None:
        """Create the directories (0700; existing ones are made private; one owned by another user is refused),
        take the lock or raise :class:`StateDirBusy` naming the holder, then record our pid in the lock file."""
        for d in (self.path, self.logs):
            try:
                make_private(d)
            except PermissionError as e:  # owned by another user: they could open it again whatever its mode
                raise StateDirBusy(f"state directory refused: {e.strerror}") from None
        lock = self.path / LOCK_NAME
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise StateDirBusy(
                    f"state directory {self.path} is in use by another jobs server (pid {holder[:20]}); "
                    "stop it or choose another --state-dir"
                ) from None
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Drop the lock (the pid stays in the file: harmless, the lock is what counts)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

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
