"""Job output store: one append-only file per job and stream, readers follow them on a notification.

A writer appends to the file and then notifies a :class:`threading.Condition`; each reader keeps only its
file offsets and reads the file with ``pread``, so every reader (late ones included) gets exactly the
bytes of the file from the first one, memory per reader is one chunk, and nobody polls.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

STDOUT, STDERR = 0, 1
STREAM_NAMES = ("stdout", "stderr")
CHUNK_SIZE = 256 * 1024  # default per-reader buffer and maximum message size


class JobLog:
    """The two output files of a job (``<dir>/<job_id>.stdout`` / ``.stderr``) and their readers' condition.

    ``JobLog.create`` opens them for writing (a live job); ``JobLog.open`` serves existing files of a
    finished job (already closed: readers stop at the end of the files).
    """

    def __init__(self, directory: Path, job_id: str, *, live: bool) -> None:
        self.paths = tuple(directory / f"{job_id}.{name}" for name in STREAM_NAMES)
        self._cond = threading.Condition()
        self._fds: list[int] = []
        if live:
            # No O_APPEND: splice() refuses it; the single writer tracks the offsets (self._sizes) itself.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            for path in self.paths:
                self._fds.append(os.open(path, flags, 0o600))
            self._sizes = [0, 0]
        else:
            self._sizes = [_size(path) for path in self.paths]
        self._closed = not live

    @classmethod
    def create(cls, directory: Path, job_id: str) -> JobLog:
        return cls(directory, job_id, live=True)

    @classmethod
    def open(cls, directory: Path, job_id: str) -> JobLog:
        return cls(directory, job_id, live=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def sizes(self) -> tuple[int, int]:
        with self._cond:
            return self._sizes[0], self._sizes[1]

    def write(self, stream: int, data: bytes) -> None:
        """Append to a stream (single writer) and wake its readers."""
        view = memoryview(data)
        offset = self._sizes[stream]
        while view:
            n = os.pwrite(self._fds[stream], view, offset)
            view = view[n:]
            offset += n
        with self._cond:
            self._sizes[stream] = offset
            self._cond.notify_all()

    def splice_from(self, stream: int, pipe_fd: int, size: int) -> int:
        """Move up to ``size`` bytes from a pipe to a stream in the kernel (no copy through Python).

        Returns the byte count (0 at end of pipe); raises OSError when splice is not possible here.
        """
        n = os.splice(pipe_fd, self._fds[stream], size, offset_dst=self._sizes[stream])
        if n:
            with self._cond:
                self._sizes[stream] += n
                self._cond.notify_all()
        return n

    def close(self) -> None:
        """End of output: readers finish what is written and stop."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            fds, self._fds = self._fds, []
            self._cond.notify_all()
        for fd in fds:
            os.close(fd)

    def wake(self) -> None:
        """Wake every reader so that it re-checks its ``cancelled`` predicate (client gone, shutdown)."""
        with self._cond:
            self._cond.notify_all()

    def read(
        self,
        follow: bool = True,
        cancelled: Callable[[], bool] = lambda: False,
        chunk_size: int | Callable[[], int] = CHUNK_SIZE,
    ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(stream, data)`` from the first byte; with ``follow``, until the log is closed.

        Without ``follow``, stop at the sizes known at the call. Call :meth:`wake` after ``cancelled``
        becomes true so that a reader waiting for output notices it. ``chunk_size`` (bytes, or a function
        asked before each read) bounds the memory a reader holds.
        """
        chunk = chunk_size if callable(chunk_size) else (lambda: chunk_size)
        fds = [_open_read(path) for path in self.paths]
        offsets = [0, 0]
        try:
            while True:
                with self._cond:
                    while True:
                        sizes = list(self._sizes)
                        closed = self._closed
                        if closed or not follow or sizes != offsets or cancelled():
                            break
                        self._cond.wait()
                for stream in (STDOUT, STDERR):
                    while offsets[stream] < sizes[stream]:
                        if cancelled():
                            return
                        want = min(chunk(), sizes[stream] - offsets[stream])
                        data = os.pread(fds[stream], want, offsets[stream])
                        if not data:  # truncated under us: nothing sane left to serve
                            return
                        offsets[stream] += len(data)
                        yield stream, data
                if closed or not follow or cancelled():
                    return
        finally:
            for fd in fds:
                os.close(fd)


def _open_read(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # a job that never started may have no files: serve it as empty
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def remove(directory: Path, job_id: str) -> None:
    """Delete a job's log files."""
    for name in STREAM_NAMES:
        (directory / f"{job_id}.{name}").unlink(missing_ok=True)
