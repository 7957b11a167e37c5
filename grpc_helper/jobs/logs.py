"""Job output store: one append-only file per job and stream, readers follow them on a notification.

The single writer (the job's output pump) appends to the files and then wakes the readers: threads waiting
on a :class:`threading.Condition` (:meth:`JobLog.read`) and asyncio tasks waiting on a future
(:meth:`JobLog.follow`, the service's way: a waiting follower costs a future, not a thread). Readers keep
only their file offsets and ``pread`` the files, so every reader (late ones included) gets exactly the bytes
of the file from the first one, memory per reader is one chunk, and nobody polls.

The writer enforces the per-job log limit and survives a full file system: past ``max_bytes`` (both streams
together) or on ``ENOSPC``/``EDQUOT`` it stops writing, drops further output (still reading the pipes) and
calls ``on_stop`` once with the reason, so that the job is killed with that reason instead of running on with
its output lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from grpc_helper.jobs.limits import size_text
from grpc_helper.jobs.store import StopReason

STDOUT, STDERR = 0, 1
STREAM_NAMES = ("stdout", "stderr")
CHUNK_SIZE = 256 * 1024  # default per-reader buffer and maximum message size
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_SHARED_READ = 64 << 10  # followers in step share reads up to this size (a live log keeps at most one)
#: A writer that batches (the output pump) wakes the readers at most this often (seconds) while output keeps
#: coming: a fast job's output then goes out in big messages instead of one small message per pipe write.
WAKE_INTERVAL = 0.002
_BATCH = 256 << 10  # while a wake-up is held back, a follower waits for this much (or its chunk size)

#: ``on_stop(reason, message)``: the log stopped accepting output (called once, from the writer's thread).
StopCallback = Callable[[StopReason, str], None]


class JobLog:
    """The two output files of a job (``<dir>/<job_id>.stdout`` / ``.stderr``) and their readers' wake-ups.

    ``JobLog.create`` opens them for writing (a live job, files mode 0600); ``JobLog.open`` serves existing
    files of a finished job (already closed: readers stop at the end of the files).
    """

    def __init__(
        self, directory: Path, job_id: str, *, live: bool, max_bytes: int = 0, on_stop: StopCallback | None = None
    ) -> None:
        self.paths = tuple(directory / f"{job_id}.{name}" for name in STREAM_NAMES)
        self.max_bytes = max_bytes
        self._on_stop = on_stop
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        #: The last chunk read, shared by followers at the same place (they read the same bytes, in step).
        self.last_read: tuple[int, int, bytes] = (-1, -1, b"")
        self._fds: list[int] = []
        self._woken = 0.0  # time.monotonic() of the last wake-up
        self._held = False  # a batching writer's wake-up waits for WAKE_INTERVAL to pass
        #: Why the log stopped accepting output (``StopReason.NONE`` while it accepts it).
        self.stopped = StopReason.NONE
        if live:
            # No O_APPEND: splice() refuses it; the single writer tracks the offsets (self._sizes) itself.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                for path in self.paths:
                    self._fds.append(os.open(path, flags, 0o600))
            except OSError:
                for fd in self._fds:
                    os.close(fd)
                for path in self.paths[: len(self._fds)]:
                    path.unlink(missing_ok=True)
                raise
            self._sizes = [0, 0]
        else:
            self._sizes = [_size(path) for path in self.paths]
        self._closed = not live

    @classmethod
    def create(
        cls, directory: Path, job_id: str, max_bytes: int = 0, on_stop: StopCallback | None = None
    ) -> JobLog:
        return cls(directory, job_id, live=True, max_bytes=max_bytes, on_stop=on_stop)

    @classmethod
    def open(cls, directory: Path, job_id: str) -> JobLog:
        return cls(directory, job_id, live=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def sizes(self) -> tuple[int, int]:
        with self._cond:
            return self._sizes[0], self._sizes[1]

    # --- writer side (one thread) ------------------------------------------------------------------------

    def _room(self) -> int | None:
        """Bytes the log still accepts (None: no limit)."""
        if not self.max_bytes:
            return None
        return max(0, self.max_bytes - self._sizes[0] - self._sizes[1])

    def _stop(self, reason: StopReason, message: str) -> None:
        with self._cond:
            if self.stopped:
                return
            self.stopped = reason
        if self._on_stop is not None:
            self._on_stop(reason, message)

    def _over_limit(self) -> None:
        self._stop(StopReason.LOG_LIMIT, f"output went past the log limit of {size_text(self.max_bytes)}")

    def _no_space(self, error: OSError) -> None:
        self._stop(StopReason.NO_SPACE, f"output could not be written to the state directory: {error.strerror}")

    def _grew(self, stream: int, offset: int, batch: bool = False) -> None:
        with self._cond:
            self._sizes[stream] = offset
            if batch and time.monotonic() - self._woken < WAKE_INTERVAL:
                self._held = True
                return
            self._notify()

    def held_wakeup(self) -> float | None:
        """Seconds until the wake-up a batching writer held back is due (0: now), None when none is held."""
        with self._cond:
            if not self._held:
                return None
            return max(0.0, self._woken + WAKE_INTERVAL - time.monotonic())

    def release_wakeup(self) -> None:
        """Send the wake-up a batching writer held back, if any."""
        with self._cond:
            if self._held:
                self._notify()

    def write(self, stream: int, data: bytes, batch: bool = False) -> None:
        """Append to a stream (single writer) and wake its readers; output past the limit is dropped.

        With ``batch``, the wake-up may be held back (up to ``WAKE_INTERVAL``): the writer then calls
        :meth:`release_wakeup` once :meth:`held_wakeup` says it is due."""
        if self.stopped:
            return
        room = self._room()
        view = memoryview(data)[: len(data) if room is None else room]
        offset = self._sizes[stream]
        try:
            while view:
                n = os.pwrite(self._fds[stream], view, offset)
                view = view[n:]
                offset += n
        except OSError as e:
            self._grew(stream, offset)
            if e.errno in _NO_SPACE:
                self._no_space(e)
                return
            raise
        self._grew(stream, offset, batch)
        if room is not None and len(data) > room:
            self._over_limit()

    def splice_from(self, stream: int, pipe_fd: int, size: int, batch: bool = False) -> int:
        """Move up to ``size`` bytes from a pipe to a stream in the kernel (no copy through Python).

        Returns the byte count, 0 at the end of the pipe. Once the log stopped accepting output, the pipe is
        still read (and the bytes dropped) so that the job does not die of SIGPIPE before it is killed with
        the reason. Raises OSError when splice is not possible here.
        """
        if self.stopped:
            return len(os.read(pipe_fd, size))  # dropped: the pipe stays open until the job is killed
        room = self._room()
        if room == 0:
            dropped = len(os.read(pipe_fd, size))
            if dropped:  # more than the limit (not just the end of the pipe)
                self._over_limit()
            return dropped
        try:
            n = os.splice(pipe_fd, self._fds[stream], size if room is None else min(size, room),
                          offset_dst=self._sizes[stream])
        except OSError as e:
            if e.errno in _NO_SPACE:
                self._no_space(e)
                return len(os.read(pipe_fd, size))
            raise
        if n:
            self._grew(stream, self._sizes[stream] + n, batch)
        return n

    def close(self) -> None:
        """End of output: readers finish what is written and stop."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            fds, self._fds = self._fds, []
            self._notify()
        for fd in fds:
            os.close(fd)

    def wake(self) -> None:
        """Wake every reader so that it re-checks its ``cancelled`` predicate (client gone, shutdown)."""
        with self._cond:
            self._notify()

    def _notify(self) -> None:
        """Wake thread readers and asyncio followers (called with ``_cond`` held)."""
        self._held = False
        self._woken = time.monotonic()
        self._cond.notify_all()
        if not self._waiters:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for loop, future in self._waiters:
            by_loop.setdefault(loop, []).append(future)
        self._waiters = []
        for loop, futures in by_loop.items():  # one wake-up per loop, however many followers wait there
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, futures)

    # --- reader side -----------------------------------------------------------------------------------------

    def _snapshot(self) -> tuple[list[int], bool]:
        with self._cond:
            return list(self._sizes), self._closed

    def read(
        self,
        follow: bool = True,
        cancelled: Callable[[], bool] = lambda: False,
        chunk_size: int | Callable[[], int] = CHUNK_SIZE,
    ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(stream, data)`` from the first byte; with ``follow``, until the log is closed (a thread waits).

        Without ``follow``, stop at the sizes known at the call. Call :meth:`wake` after ``cancelled``
        becomes true so that a reader waiting for output notices it. ``chunk_size`` (bytes, or a function
        asked before each read) bounds the memory a reader holds.
        """
        cursor = _Cursor(self, chunk_size)
        try:
            while True:
                with self._cond:
                    while True:
                        sizes, closed = list(self._sizes), self._closed
                        if closed or not follow or sizes != cursor.offsets or cancelled():
                            break
                        self._cond.wait()
                yield from cursor.chunks(sizes, cancelled)
                if cursor.broken or closed or not follow or cancelled():
                    return
        finally:
            cursor.close()

    async def follow(
        self,
        follow: bool = True,
        cancelled: Callable[[], bool] = lambda: False,
        chunk_size: int | Callable[[], int] = CHUNK_SIZE,
    ) -> AsyncIterator[tuple[int, bytes]]:
        """:meth:`read` for asyncio: a waiting follower is a future woken by the writer, no thread, no polling.

        Cancelling the task that iterates ends it; :meth:`wake` makes it re-check ``cancelled``.
        """
        loop = asyncio.get_running_loop()
        cursor = _Cursor(self, chunk_size)
        waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        try:
            while True:
                with self._cond:
                    sizes, closed = list(self._sizes), self._closed
                    if follow and not closed and not cancelled() and (
                        sizes == cursor.offsets or (self._held and cursor.pending(sizes) < cursor.batch())
                    ):
                        # Nothing new, or a little while the writer holds a wake-up back: more is coming (within
                        # WAKE_INTERVAL), so wait for it rather than send many small messages.
                        waiter = (loop, loop.create_future())
                        self._waiters.append(waiter)
                if waiter is not None:
                    await waiter[1]
                    waiter = None
                    continue
                for item in cursor.chunks(sizes, cancelled):
                    yield item
                if cursor.broken or closed or not follow or cancelled():
                    return
        finally:
            if waiter is not None:
                with self._cond:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
            cursor.close()


class _Cursor:
    """A reader's position in both files: what :meth:`JobLog.read` and :meth:`JobLog.follow` share."""

    def __init__(self, log: JobLog, chunk_size: int | Callable[[], int]) -> None:
        self.log = log
        self.chunk = chunk_size if callable(chunk_size) else (lambda: chunk_size)
        self.fds = [_open_read(path) for path in log.paths]
        self.offsets = [0, 0]
        self.broken = False

    def pending(self, sizes: list[int]) -> int:
        """Bytes written up to ``sizes`` that this reader has not read yet."""
        return sizes[0] - self.offsets[0] + sizes[1] - self.offsets[1]

    def batch(self) -> int:
        """Bytes worth a message of their own while more output is coming."""
        return min(self.chunk(), _BATCH)

    def chunks(self, sizes: list[int], cancelled: Callable[[], bool]) -> Iterator[tuple[int, bytes]]:
        """What was written up to ``sizes``, chunk by chunk (a page-cache read: it does not block)."""
        for stream in (STDOUT, STDERR):
            while self.offsets[stream] < sizes[stream]:
                if cancelled():
                    return
                offset = self.offsets[stream]
                want = min(self.chunk(), sizes[stream] - offset)
                cached_stream, cached_offset, data = self.log.last_read
                if cached_stream != stream or cached_offset != offset or len(data) != want:
                    data = os.pread(self.fds[stream], want, offset)
                    if len(data) <= _SHARED_READ:
                        self.log.last_read = (stream, offset, data)
                if not data:  # truncated (or purged) under us: nothing sane left to serve
                    self.broken = True
                    return
                self.offsets[stream] += len(data)
                yield stream, data

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _open_read(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # a job that never started (or was purged) may have no files: serve it as empty
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
