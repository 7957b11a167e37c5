"""``StateDirLock``: one server process at a time on a state directory.

Two servers sharing a state directory would each take the other's records for leftovers of a crash. The lock
is an exclusive ``flock`` on a file in the directory: the kernel releases it when its holder dies, so a crash
never leaves a stale lock behind. The holder writes its pid in the file, so that a refused server can say who
holds the directory::

    from grpc_helper.statedir import StateDirBusy, StateDirLock

    lock = StateDirLock("/var/lib/myservice", holder="myservice server")
    try:
        lock.acquire()
    except StateDirBusy as e:
        sys.exit(f"error: {e}")  # "state directory /var/lib/myservice is in use by another myservice server
                                 #  (pid 1234); stop it or choose another --state-dir"
    serve()
    lock.release()  # or: with StateDirLock(...): serve()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["StateDirBusy", "StateDirLock"]


class StateDirBusy(Exception):
    """The state directory cannot be used: another process holds it (the message names its pid), or it is not
    ours (another user owns it)."""


class StateDirLock:
    """An exclusive lock on ``directory`` (the file ``directory/name``, created 0600), held until ``release``."""

    def __init__(self, directory: Path | str, *, name: str = "lock", holder: str = "server") -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.holder = holder
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> None:
        """Take the lock, or raise ``StateDirBusy`` naming the holder's pid; then write our pid in the file."""
        if self._fd >= 0:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise StateDirBusy(
                    f"state directory {self.directory} is in use by another {self.holder} (pid {pid[:20]}); "
                    "stop it or choose another --state-dir"
                ) from None
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent; the pid stays in the file: harmless, the lock is what counts)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
