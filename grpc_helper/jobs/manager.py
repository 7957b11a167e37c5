"""``JobsManager``: the Jobs service (Run, Stop, Status, List, Logs) on the asyncio server.

Calls run on the event loop and never block it: spawning and SQLite run in small bounded thread pools, log
followers wait on futures woken by the job's output pump (a waiting follower costs a future and one chunk,
not a thread). Each job's process is supervised by :class:`grpc_helper.jobs.process.JobProcess`, whose
threads hand the job's end back to the loop.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from grpc_helper import AsyncRpcManager, ResultCode, RpcException
from grpc_helper.jobs import requests
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc
from grpc_helper.jobs.auth import Caller, caller
from grpc_helper.jobs.cgroups import DEFAULT_PARENT, CgroupSupport, detect
from grpc_helper.jobs.launch import Launcher, LiveJob
from grpc_helper.jobs.limits import JobsLimits
from grpc_helper.jobs.logs import STDERR, STDOUT, JobLog
from grpc_helper.jobs.process import read_boot_id
from grpc_helper.jobs.records import Records
from grpc_helper.jobs.recovery import recover
from grpc_helper.jobs.sandbox import Isolation, support
from grpc_helper.jobs.statedir import StateDir, StateDirBusy
from grpc_helper.jobs.store import JobRecord, State, StopReason

T = TypeVar("T")
# Log streams share a memory budget: a lone reader gets big messages (throughput), many readers small ones
# (each holds a few copies of its chunk: file read, message, serialised bytes, transport buffer).
LOGS_MEMORY_BUDGET = 4 << 20
MIN_CHUNK = 16 << 10
MAX_CHUNK = 1 << 20
PAGE_BYTES = 3 << 20  # a List page ends before this many bytes (gRPC's default message limit is 4 MiB)
PURGE_INTERVAL = 600.0
_END_MARGIN = 15.0  # after SIGKILL: the pump's drain timeout and the record's write
_EXHAUSTED = (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE)


_CHUNK_HEADERS = {
    # LogChunk's stream (field 1, varint) then data's tag (field 2, length-delimited); the length follows.
    STDOUT: bytes([0x08, jobs_pb2.STDOUT, 0x12]),
    STDERR: bytes([0x08, jobs_pb2.STDERR, 0x12]),
}


def encoded_chunk(stream: int, data: bytes) -> bytes:
    """``LogChunk(stream=..., data=data).SerializeToString()`` in one copy of ``data`` (no message object: log
    chunks are up to 1 MiB, and the asyncio server sends replies given as bytes as they are)."""
    size = len(data)
    if not size:  # proto3 leaves empty fields out
        return _CHUNK_HEADERS[stream][:2]
    length = bytearray()
    while size > 0x7F:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return b"".join((_CHUNK_HEADERS[stream], length, data))


class JobsManager(jobs_pb2_grpc.JobsServicer, AsyncRpcManager):
    """Runs jobs for mTLS-authenticated clients; host it in an ``AsyncRpcServer``.

    :param state_dir: where ``jobs.sqlite3`` and ``logs/`` live (created private, locked while served).
    :param admins: certificate common names allowed to see and act on every job, beside the server's admins.
    :param cgroups: False disables cgroups (jobs with limits are then refused).
    :param cgroup_parent: name of the parent cgroup of the jobs' cgroups.
    :param cgroup_root: cgroup mount to use instead of the detected one (tests).
    :param stop_grace: SIGTERM to SIGKILL delay used at server shutdown.
    :param run_as: the account jobs run as (name or uid; None: ``nobody`` when the server runs as root, else the
        server's own user); ``run_as_for`` maps client names to other accounts. Checked at load.
    :param isolation: namespaces of every job (``grpc_helper.jobs.sandbox.Isolation``; None: the host's
        default, an own PID namespace where available); a Run request may add ``no_network``/``private_tmp``.
    :param limits: running jobs, log size, free space and retention (:class:`JobsLimits`); the same fields
        may be given one by one as keyword arguments instead (``max_running=10``).
    """

    def __init__(
        self,
        state_dir: Path | str,
        admins: Iterable[str] = (),
        *,
        cgroups: bool = True,
        cgroup_parent: str = DEFAULT_PARENT,
        cgroup_root: Path | None = None,
        stop_grace: float = requests.DEFAULT_GRACE,
        run_as: str | int | None = None,
        run_as_for: Mapping[str, str | int] | None = None,
        isolation: Isolation | None = None,
        limits: JobsLimits | None = None,
        **limit_fields: Any,
    ) -> None:
        super().__init__()
        self.state = StateDir(state_dir)
        self.state_dir = self.state.path
        self.logs_dir = self.state.logs
        self.admins = frozenset(admins)
        self.stop_grace = stop_grace
        self.limits = JobsLimits(**limit_fields) if limits is None else limits
        if limits is not None and limit_fields:
            raise TypeError("give either limits= or its fields, not both")
        self._cgroup_options = (cgroups, cgroup_parent, cgroup_root)
        self._run_as = (run_as, dict(run_as_for or {}))
        self._launcher: Launcher | None = None
        self._launching: set[asyncio.Future[LiveJob]] = set()
        self._isolation = isolation
        self._live: dict[str, LiveJob] = {}
        self._running = Counter[str]()  # running (or starting) jobs per owner
        self._readers = 0
        self._closing = False
        self._boot_id = read_boot_id()
        self.cgroups = CgroupSupport(0, {}, "not detected yet")
        self._records: Records | None = None
        self._db = ThreadPoolExecutor(2, thread_name_prefix="jobs-db")
        self._spawner = ThreadPoolExecutor(4, thread_name_prefix="jobs-spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._purger: asyncio.Task[None] | None = None

    # --- life cycle -------------------------------------------------------------------------------------

    async def load(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self.state.acquire()
        except StateDirBusy as e:
            raise RpcException(str(e), ResultCode.ERROR_STATE_UNEXPECTED) from None
        try:
            self._records = records = await self._in(self._db, Records, self.state, self.logger)
            enabled, parent, root = self._cgroup_options
            self.cgroups = detect(root, parent, enabled)
            self.logger.info("%s", self.cgroups.describe())
            self._launcher = await self._in(
                self._spawner, Launcher, self.state, self.limits, self.cgroups, records, self._boot_id, self._run_as,
                self._isolation, self._log_stopped,
            )
            self.logger.info("jobs run as %s (%s)", self._launcher.users[None].name, support().describe())
            await self._in(self._db, recover, records.store, records.put, self.cgroups, self._boot_id, self.logger)
        except BaseException:
            await self.shutdown()  # the server does not call it for a manager that failed to load
            raise
        if self.limits.purges:
            self._purger = asyncio.create_task(self._purge_forever(), name="jobs-purge")

    @property
    def records(self) -> Records:
        if self._records is None:
            raise RpcException("jobs service not loaded", ResultCode.ERROR_STATE_UNEXPECTED)
        return self._records

    async def begin_shutdown(self) -> None:
        """Refuse new jobs and end the log streams now, so in-flight calls finish within the grace period."""
        self._closing = True
        for job in list(self._live.values()):
            if job.log is not None:
                job.log.wake()

    async def shutdown(self) -> None:
        """Stop running jobs (SIGTERM, SIGKILL after ``stop_grace``), then close the store and the lock."""
        self._closing = True
        if self._launching:  # starts in flight: adopted first (their done callbacks run before gather's), then stopped
            await asyncio.gather(*self._launching, return_exceptions=True)
        if self._purger is not None:
            self._purger.cancel()
        live = list(self._live.values())
        for job in live:
            job.stop_reason = job.stop_reason or StopReason.SERVER
        await asyncio.gather(*(self._stop(job, self.stop_grace) for job in live))
        if live:
            self.logger.info("stopped %d running job(s) at shutdown", len(live))
        records, self._records = self._records, None
        if records is not None:
            await self._in(self._db, records.close)
        self._db.shutdown(wait=True)
        self._spawner.shutdown(wait=True)
        self.state.release()

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception:
                self.logger.exception("purge of old jobs failed")
            await asyncio.sleep(PURGE_INTERVAL)

    async def purge(self) -> int:
        """Delete the records and logs of finished jobs past the retention limits now; returns how many."""
        lim = self.limits
        total = 0
        while self._records is not None:
            older = time.time() - lim.keep_age if lim.keep_age is not None else None
            gone = await self._in(self._db, self._records.purge, self.logs_dir, older, lim.keep_count)
            total += gone
            if not gone:
                break
        if total:
            self.logger.info("purged %d finished job(s)", total)
        return total

    # --- helpers ------------------------------------------------------------------------------------------

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _caller(self) -> Caller:
        return caller(self.admins)

    async def _find(self, job_id: str) -> tuple[Caller, JobRecord]:
        """The caller and the job it asks for; NOT_FOUND also for jobs of others (existence is not leaked)."""
        who = self._caller()
        canonical = requests.job_id(job_id)
        live = self._live.get(canonical)
        rec = live.record if live is not None else await self._in(self._db, self.records.get, canonical)
        if rec is None or not who.may_see(rec.owner):
            raise RpcException(f"unknown job {canonical}", ResultCode.ERROR_ITEM_UNKNOWN)
        return who, rec

    def _admit(self, owner: str) -> None:
        """Reserve a running slot for ``owner`` or raise RESOURCE_EXHAUSTED (on the loop: no race)."""
        lim = self.limits
        if lim.max_running and sum(self._running.values()) >= lim.max_running:
            raise RpcException(f"too many running jobs on this server (max {lim.max_running})",
                               ResultCode.ERROR_RESOURCE_EXHAUSTED)
        if lim.max_running_per_owner and self._running[owner] >= lim.max_running_per_owner:
            raise RpcException(
                f"too many running jobs for {owner[:80]} (max {lim.max_running_per_owner} per client): "
                "wait for some to end or stop them", ResultCode.ERROR_RESOURCE_EXHAUSTED,
            )
        self._running[owner] += 1

    def _release(self, owner: str) -> None:
        self._running[owner] -= 1
        if self._running[owner] <= 0:
            del self._running[owner]

    # --- starting and ending jobs -------------------------------------------------------------------------

    def _adopt(self, owner: str, launched: asyncio.Future[LiveJob]) -> None:
        """On the loop, once the launch finished (even if the Run call was cancelled meanwhile)."""
        self._launching.discard(launched)
        if launched.cancelled() or launched.exception() is not None:
            self._release(owner)
            return
        live = launched.result()
        proc, cgroup = live.proc, live.cgroup
        if proc is None:
            self._release(owner)
            return
        live.ended = asyncio.get_running_loop().create_future()
        self._live[live.record.job_id] = live
        proc.start(lambda rc: self._on_exit(live, rc), cgroup.kill_all if cgroup else lambda: None)
        self.logger.info("job %s of %s started: pid %d, %s", live.record.job_id, owner, proc.pid, live.record.command[0])

    def _log_stopped(self, live: LiveJob) -> Callable[[StopReason, str], None]:
        """The log's ``on_stop``: from the output pump's thread, kill the job on the loop with that reason."""

        def stopped(reason: StopReason, message: str) -> None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._kill_for, live, reason, message)

        return stopped

    def _kill_for(self, live: LiveJob, reason: StopReason, message: str) -> None:
        if live.proc is None or live.stop_reason:
            return
        live.stop_reason, live.error = reason, message
        live.proc.signal(signal.SIGKILL)
        self.logger.warning("job %s of %s killed: %s", live.record.job_id, live.record.owner, message)

    def _on_exit(self, live: LiveJob, rc: int) -> None:
        """Final status of a job whose process group is gone and output drained (the job's waiter thread)."""
        rec = live.record
        oom = False
        if live.cgroup is not None:
            oom = live.cgroup.oom_killed()
            live.cgroup.remove()
        stopped_by = live.stop_reason or (StopReason.OOM if oom else StopReason.NONE)
        how = {"state": State.EXITED, "exit_code": rc} if rc >= 0 else {"state": State.KILLED, "signal": -rc}
        rec = rec.update(stopped_by=stopped_by, end_time=time.time(), error=live.error, **how)
        if self._records is not None:
            try:
                self._records.save(rec)
            except Exception:
                self.logger.exception("cannot record the end of job %s", rec.job_id)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._ended, live, rec)

    def _ended(self, live: LiveJob, rec: JobRecord) -> None:
        live.record = rec
        if self._live.pop(rec.job_id, None) is not None:
            self._release(rec.owner)
        if live.ended is not None and not live.ended.done():
            live.ended.set_result(None)
        self.logger.info("job %s ended: %s", rec.job_id, rec.state.name)

    async def _stop(self, live: LiveJob, grace: float) -> bool:
        """SIGTERM the job's group, SIGKILL after ``grace``, wait for its final record. False if already over."""
        proc, ended = live.proc, live.ended
        if proc is None or ended is None or ended.done():
            return False
        proc.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(ended), grace)
        except TimeoutError:
            proc.signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(asyncio.shield(ended), _END_MARGIN)
            except TimeoutError:
                self.logger.warning("job %s did not end %.0fs after SIGKILL", live.record.job_id, _END_MARGIN)
        return True

    # --- service methods ----------------------------------------------------------------------------------

    async def Run(self, request: jobs_pb2.RunRequest, context: Any) -> jobs_pb2.JobStatus:
        who = self._caller()
        argv, env, cwd = requests.command(request)
        limits = requests.limits(request.limits)
        if self._closing:
            raise RpcException("the server is shutting down", ResultCode.ERROR_STATE_UNEXPECTED)
        launcher = self._launcher
        if launcher is None:
            raise RpcException("jobs service not loaded", ResultCode.ERROR_STATE_UNEXPECTED)
        isolation = launcher.isolation_for(request.no_network, request.private_tmp)
        self._admit(who.name)
        launched = asyncio.get_running_loop().run_in_executor(
            self._spawner, launcher.launch, who.name, argv, env, cwd, limits, isolation
        )
        launched.add_done_callback(lambda f: self._adopt(who.name, f))
        self._launching.add(launched)
        live = await asyncio.shield(launched)
        if live.proc is None:
            self.logger.info("job %s of %s failed to start: %s", live.record.job_id, who.name, live.record.error)
        return requests.to_proto(live.record)

    async def Stop(self, request: jobs_pb2.StopRequest, context: Any) -> jobs_pb2.StopResponse:
        _, rec = await self._find(request.job_id)
        grace = requests.grace(request)
        live = self._live.get(rec.job_id)
        if live is None:
            return jobs_pb2.StopResponse(stopped=False, status=requests.to_proto(rec))
        if not live.stop_reason:
            live.stop_reason = StopReason.USER
        stopped = await self._stop(live, grace)
        return jobs_pb2.StopResponse(stopped=stopped, status=requests.to_proto(live.record))

    async def Status(self, request: jobs_pb2.JobRequest, context: Any) -> jobs_pb2.JobStatus:
        _, rec = await self._find(request.job_id)
        return requests.to_proto(rec)

    async def List(self, request: jobs_pb2.ListRequest, context: Any) -> jobs_pb2.ListResponse:
        who = self._caller()
        page = requests.page(request, who.name, who.admin)
        records = await self._in(self._db, self.records.page, page.more())
        answer = jobs_pb2.ListResponse()
        size = 0
        for i, rec in enumerate(records):
            if i == page.size:
                answer.next_page_token = records[i - 1].job_id
                break
            status = requests.to_proto(rec)
            size += status.ByteSize() + 8
            if answer.jobs and size > PAGE_BYTES:
                answer.next_page_token = records[i - 1].job_id
                break
            answer.jobs.append(status)
        return answer

    async def Logs(self, request: jobs_pb2.LogsRequest, context: Any) -> AsyncIterator[Any]:  # LogChunks, encoded
        _, rec = await self._find(request.job_id)
        live = self._live.get(rec.job_id)
        log = live.log if live is not None and live.log is not None else JobLog.open(self.logs_dir, rec.job_id)

        def closing() -> bool:
            return self._closing

        def chunk_size() -> int:
            return max(MIN_CHUNK, min(MAX_CHUNK, LOGS_MEMORY_BUDGET // max(1, self._readers)))

        self._readers += 1
        try:
            async for stream, data in log.follow(request.follow, closing, chunk_size):
                yield encoded_chunk(stream, data)
            if request.follow and self._closing and not log.closed:
                # A follower must not mistake the end of this stream for the end of the job.
                raise RpcException("the server is shutting down: the job's output was cut", ResultCode.ERROR_STREAM_SHUTDOWN)
        finally:
            self._readers -= 1
