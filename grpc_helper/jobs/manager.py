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
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from grpc_helper import AsyncRpcManager, ResultCode, RpcException
from grpc_helper.jobs import ids, requests
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc
from grpc_helper.jobs.auth import Caller, caller
from grpc_helper.jobs.cgroups import DEFAULT_PARENT, CgroupError, CgroupSupport, JobCgroup, detect
from grpc_helper.jobs.limits import JobsLimits, size_text
from grpc_helper.jobs.logs import STDOUT, JobLog, remove
from grpc_helper.jobs.process import JobProcess, LaunchSpec, StartError, read_boot_id
from grpc_helper.jobs.recovery import recover
from grpc_helper.jobs.sandbox import Isolation, JobUser, SandboxError, resolve_user, support
from grpc_helper.jobs.statedir import StateDir, StateDirBusy
from grpc_helper.jobs.store import JobRecord, JobStore, LimitsSpec, Page, State, StopReason, StoreFull

T = TypeVar("T")
# Log streams share a memory budget: a lone reader gets big messages (throughput), many readers small ones
# (each holds a few copies of its chunk: file read, message, serialised bytes, transport buffer).
LOGS_MEMORY_BUDGET = 4 << 20
MIN_CHUNK = 16 << 10
MAX_CHUNK = 1 << 20
PAGE_BYTES = 3 << 20  # a List page ends before this many bytes (gRPC's default message limit is 4 MiB)
PURGE_INTERVAL = 600.0
RESERVE_BYTES = 1 << 20  # room kept for job records when job output fills the disk
_END_MARGIN = 15.0  # after SIGKILL: the pump's drain timeout and the record's write
_EXHAUSTED = (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE)


@dataclass
class _Live:
    """A running job's runtime objects."""

    record: JobRecord
    log: JobLog | None = None
    cgroup: JobCgroup | None = None
    proc: JobProcess | None = None
    stop_reason: StopReason = StopReason.NONE
    error: str = ""
    ended: asyncio.Future[None] | None = field(default=None, repr=False)


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
        self._users: dict[str | None, JobUser] = {}  # client name (None: everybody else) -> account
        self._isolation = isolation
        self._live: dict[str, _Live] = {}
        self._running = Counter[str]()  # running (or starting) jobs per owner
        self._readers = 0
        self._closing = False
        self._boot_id = read_boot_id()
        self.cgroups = CgroupSupport(0, {}, "not detected yet")
        self._store: JobStore | None = None
        self._unsaved: dict[str, JobRecord] = {}  # final records the full disk refused; retried on each write
        self._save_lock = threading.Lock()
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
            self._store = await self._in(self._db, JobStore, self.state_dir / "jobs.sqlite3")
            enabled, parent, root = self._cgroup_options
            self.cgroups = detect(root, parent, enabled)
            self.logger.info("%s", self.cgroups.describe())
            await self._in(self._spawner, self._check_sandbox)
            await self._in(self._db, recover, self._store, self._put, self.cgroups, self._boot_id, self.logger)
            if not await self._in(self._db, self.state.make_reserve, RESERVE_BYTES):
                self.logger.warning("the state directory's file system is full: no room kept for job records")
        except BaseException:
            await self.shutdown()  # the server does not call it for a manager that failed to load
            raise
        if self.limits.purges:
            self._purger = asyncio.create_task(self._purge_forever(), name="jobs-purge")

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RpcException("jobs service not loaded", ResultCode.ERROR_STATE_UNEXPECTED)
        return self._store

    async def begin_shutdown(self) -> None:
        """Refuse new jobs and end the log streams now, so in-flight calls finish within the grace period."""
        self._closing = True
        for job in list(self._live.values()):
            if job.log is not None:
                job.log.wake()

    async def shutdown(self) -> None:
        """Stop running jobs (SIGTERM, SIGKILL after ``stop_grace``), then close the store and the lock."""
        self._closing = True
        if self._purger is not None:
            self._purger.cancel()
        live = list(self._live.values())
        for job in live:
            job.stop_reason = job.stop_reason or StopReason.SERVER
        await asyncio.gather(*(self._stop(job, self.stop_grace) for job in live))
        if live:
            self.logger.info("stopped %d running job(s) at shutdown", len(live))
        if self._unsaved and self._store is not None:
            await self._in(self._db, self._save_unsaved)
        store, self._store = self._store, None
        if store is not None:
            await self._in(self._db, store.close)
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
        while self._store is not None:
            older = time.time() - lim.keep_age if lim.keep_age is not None else None
            gone = await self._in(self._db, self._purge_batch, older, lim.keep_count)
            total += gone
            if not gone:
                break
        if total:
            self.logger.info("purged %d finished job(s)", total)
        return total

    def _check_sandbox(self) -> None:
        """Resolve the accounts and check the namespaces once (a wrong option stops the server from starting)."""
        default, mapping = self._run_as
        try:
            self._users = {None: resolve_user(default)}
            self._users.update({name: resolve_user(user) for name, user in mapping.items()})
            host = support()
            if self._isolation is None:
                self._isolation = host.default()
            host.check(self._isolation)
        except SandboxError as e:
            raise RpcException(f"jobs sandbox: {e.message}", ResultCode.ERROR_STATE_UNEXPECTED) from None
        self.logger.info("jobs run as %s (%s)", self._users[None].name, host.describe())

    def _purge_batch(self, older_than: float | None, keep: int | None) -> int:
        removed = self.store.purge(older_than, keep)
        for job_id in removed:
            remove(self.logs_dir, job_id)
        return len(removed)

    # --- helpers ------------------------------------------------------------------------------------------

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _caller(self) -> Caller:
        return caller(self.admins)

    def _get(self, job_id: str) -> JobRecord | None:
        return self._unsaved.get(job_id) or self.store.get(job_id)

    def _put(self, *records: JobRecord) -> None:
        """Write records; when the file system is full, give the reserved room back and try again (StoreFull)."""
        try:
            self.store.put_many(list(records))
        except StoreFull:
            if not self.state.drop_reserve():
                raise
            self.logger.warning("the state directory's file system is full: using the room kept for job records")
            self.store.put_many(list(records))

    def _save(self, record: JobRecord) -> None:
        """Write a record (any thread); when the disk is full keep it in memory and retry with the next write."""
        with self._save_lock:
            pending = {**self._unsaved, record.job_id: record}
            try:
                self._put(*pending.values())
            except StoreFull:
                self._unsaved[record.job_id] = record
                self.logger.warning("disk full: record of job %s kept in memory until there is space", record.job_id)
                return
            self._unsaved.clear()

    def _save_unsaved(self) -> None:
        with self._save_lock:
            try:
                self._put(*self._unsaved.values())
            except StoreFull:
                self.logger.error("disk full: %d job record(s) lost (they will show as LOST)", len(self._unsaved))
                return
            self._unsaved.clear()

    async def _find(self, job_id: str) -> tuple[Caller, JobRecord]:
        """The caller and the job it asks for; NOT_FOUND also for jobs of others (existence is not leaked)."""
        who = self._caller()
        canonical = requests.job_id(job_id)
        live = self._live.get(canonical)
        rec = live.record if live is not None else await self._in(self._db, self._get, canonical)
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

    def _launch(
        self, who: str, argv: list[str], env: dict[str, str], cwd: str, limits: LimitsSpec, isolation: Isolation
    ) -> _Live:
        """Create the job's log, cgroup and record, then start its process (a spawner thread).

        Returns the started job, or a failed record (``proc`` None); raises ``RpcException`` when the server
        cannot take the job (full disk: RESOURCE_EXHAUSTED), leaving nothing behind.
        """
        lim = self.limits
        free = self.state.free_bytes()
        if free < lim.min_free_bytes:
            raise RpcException(
                f"no space for job output: {size_text(free)} free in the state directory's file system "
                f"(the server keeps {size_text(lim.min_free_bytes)} free)", ResultCode.ERROR_RESOURCE_EXHAUSTED,
            )
        try:
            self.cgroups.check(limits)
            support().check(isolation)
        except (CgroupError, SandboxError) as e:
            raise RpcException(str(e), ResultCode.ERROR_STATE_UNEXPECTED) from None
        user = self._users.get(who) or self._users[None]
        job_id = str(ids.uuid7())
        namespaces = ",".join(n for n in ("pid", "net", "tmp") if getattr(isolation, n))
        live = _Live(JobRecord(job_id, who, tuple(argv), cwd, limits=limits, boot_id=self._boot_id, user=user.name,
                               namespaces=namespaces))
        try:
            live.log = JobLog.create(self.logs_dir, job_id, lim.max_log_bytes, self._log_stopped(live))
        except OSError as e:
            code = ResultCode.ERROR_RESOURCE_EXHAUSTED if e.errno in _EXHAUSTED else ResultCode.ERROR_STATE_UNEXPECTED
            raise RpcException(f"cannot create the job's log files: {e.strerror}", code) from None
        try:
            live.cgroup = self.cgroups.create(job_id, limits)
        except CgroupError as e:
            self._discard(live)
            raise RpcException(str(e), ResultCode.ERROR_STATE_UNEXPECTED) from None
        live.record = live.record.update(cgroup=live.cgroup.name if live.cgroup else "")
        # Recorded before the process exists: if the server dies now, a restart still finds (and kills) it.
        try:
            self.store.put(live.record)
        except StoreFull as e:
            self._discard(live)
            raise RpcException(f"the state directory's file system is full: {e}", ResultCode.ERROR_RESOURCE_EXHAUSTED) from None
        except BaseException:
            self._discard(live)
            raise
        spec = LaunchSpec(argv, env, cwd, live.cgroup.procs_files if live.cgroup else (), user.name, isolation)
        try:
            live.proc = JobProcess(spec, live.log)
        except StartError as e:
            self._discard(live, keep_log=True)
            live.record = live.record.update(
                state=State.FAILED_TO_START, error=f"{e.stage}: {e.message}", end_time=time.time()
            )
            self._save(live.record)
            return live
        live.record = live.record.update(pid=live.proc.pid)
        self._save(live.record)
        return live

    def _discard(self, live: _Live, keep_log: bool = False) -> None:
        """Undo a launch that did not start: close (or remove) the log, remove the cgroup."""
        if live.log is not None:
            live.log.close()
            if not keep_log:
                remove(self.logs_dir, live.record.job_id)
        if live.cgroup is not None:
            live.cgroup.remove()

    def _adopt(self, owner: str, launched: asyncio.Future[_Live]) -> None:
        """On the loop, once the launch finished (even if the Run call was cancelled meanwhile)."""
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

    def _log_stopped(self, live: _Live) -> Callable[[StopReason, str], None]:
        """The log's ``on_stop``: from the output pump's thread, kill the job on the loop with that reason."""

        def stopped(reason: StopReason, message: str) -> None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._kill_for, live, reason, message)

        return stopped

    def _kill_for(self, live: _Live, reason: StopReason, message: str) -> None:
        if live.proc is None or live.stop_reason:
            return
        live.stop_reason, live.error = reason, message
        live.proc.signal(signal.SIGKILL)
        self.logger.warning("job %s of %s killed: %s", live.record.job_id, live.record.owner, message)

    def _on_exit(self, live: _Live, rc: int) -> None:
        """Final status of a job whose process group is gone and output drained (the job's waiter thread)."""
        rec = live.record
        oom = False
        if live.cgroup is not None:
            oom = live.cgroup.oom_killed()
            live.cgroup.remove()
        stopped_by = live.stop_reason or (StopReason.OOM if oom else StopReason.NONE)
        how = {"state": State.EXITED, "exit_code": rc} if rc >= 0 else {"state": State.KILLED, "signal": -rc}
        rec = rec.update(stopped_by=stopped_by, end_time=time.time(), error=live.error, **how)
        if self._store is not None:
            try:
                self._save(rec)
            except Exception:
                self.logger.exception("cannot record the end of job %s", rec.job_id)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._ended, live, rec)

    def _ended(self, live: _Live, rec: JobRecord) -> None:
        live.record = rec
        if self._live.pop(rec.job_id, None) is not None:
            self._release(rec.owner)
        if live.ended is not None and not live.ended.done():
            live.ended.set_result(None)
        self.logger.info("job %s ended: %s", rec.job_id, rec.state.name)

    async def _stop(self, live: _Live, grace: float) -> bool:
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
        base = self._isolation or Isolation()
        isolation = Isolation(base.pid, base.net or request.no_network, base.tmp or request.private_tmp)
        self._admit(who.name)
        launched = asyncio.get_running_loop().run_in_executor(
            self._spawner, self._launch, who.name, argv, env, cwd, limits, isolation
        )
        launched.add_done_callback(lambda f: self._adopt(who.name, f))
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
        records = await self._in(self._db, self._page, page)
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

    def _page(self, page: Page) -> list[JobRecord]:
        """One more record than asked (to know whether there is a next page), as known now."""
        records = self.store.page(Page(page.size + 1, page.after, page.owner, page.states, page.newest_first))
        return [self._unsaved.get(r.job_id, r) for r in records]

    async def Logs(self, request: jobs_pb2.LogsRequest, context: Any) -> AsyncIterator[jobs_pb2.LogChunk]:
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
                yield jobs_pb2.LogChunk(stream=jobs_pb2.STDOUT if stream == STDOUT else jobs_pb2.STDERR, data=data)
            if request.follow and self._closing and not log.closed:
                # A follower must not mistake the end of this stream for the end of the job.
                raise RpcException("the server is shutting down: the job's output was cut", ResultCode.ERROR_STREAM_SHUTDOWN)
        finally:
            self._readers -= 1
