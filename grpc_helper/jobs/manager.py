"""``JobsManager``: the Jobs service (Run, Stop, Status, List, Logs) over processes, logs, SQLite and cgroups."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from grpc_helper import ResultCode, RpcException, RpcManager
from grpc_helper.jobs import ids
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc
from grpc_helper.jobs.auth import Authorizer
from grpc_helper.jobs.cgroups import DEFAULT_PARENT, CgroupError, CgroupSupport, JobCgroup, detect
from grpc_helper.jobs.logs import STDOUT, JobLog
from grpc_helper.jobs.process import JobProcess, LaunchSpec, StartError, read_boot_id, signal_group
from grpc_helper.jobs.store import JobRecord, JobStore, LimitsSpec, State, StopReason

MAX_ARGS = 4096
MAX_ARGV_BYTES = 1 << 20
MAX_ENV = 1024
MAX_GRACE = 300.0
DEFAULT_GRACE = 5.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_MEMORY = 4 << 20
MAX_IO_BPS = 1 << 40
# Log streams share a memory budget: a lone reader gets big messages (throughput), many readers small ones
# (each holds a few copies of its chunk: file read, message, serialised bytes, transport buffer).
LOGS_MEMORY_BUDGET = 4 << 20
MIN_CHUNK = 16 << 10
MAX_CHUNK = 1 << 20


@dataclass
class _Live:
    """A running job's runtime objects."""

    record: JobRecord
    log: JobLog
    cgroup: JobCgroup | None
    proc: JobProcess | None = None
    stop_reason: StopReason = StopReason.NONE


def _bad(message: str) -> RpcException:
    return RpcException(message, ResultCode.ERROR_PARAM_INVALID)


def to_proto(r: JobRecord) -> jobs_pb2.JobStatus:
    """The wire form of a record."""
    lim = r.limits
    return jobs_pb2.JobStatus(
        job_id=r.job_id, owner=r.owner, command=r.command, cwd=r.cwd, state=jobs_pb2.JobState.ValueType(r.state),
        exit_code=r.exit_code, signal=r.signal, stopped_by=jobs_pb2.StopReason.ValueType(r.stopped_by), error=r.error,
        pid=r.pid, start_time=r.start_time, end_time=r.end_time, cgroup=r.cgroup,
        limits=jobs_pb2.Limits(
            cpus=lim.cpus, memory_bytes=lim.memory_bytes, io_read_bps=lim.io_read_bps,
            io_write_bps=lim.io_write_bps, pids=lim.pids,
        ),
    )


class JobsManager(jobs_pb2_grpc.JobsServicer, RpcManager):
    """Runs jobs for mTLS-authenticated clients.

    :param state_dir: where ``jobs.sqlite3`` and ``logs/`` live (created if needed).
    :param admins: certificate common names allowed to see and act on every job.
    :param cgroups: False disables cgroups (jobs with limits are then refused).
    :param cgroup_parent: name of the parent cgroup of the jobs' cgroups.
    :param cgroup_root: cgroup mount to use instead of the detected one (tests).
    :param stop_grace: SIGTERM to SIGKILL delay used at server shutdown.
    :param max_running: running jobs allowed at once (beyond: RESOURCE_EXHAUSTED).
    """

    def __init__(
        self,
        state_dir: Path | str,
        admins: Iterable[str] = (),
        *,
        cgroups: bool = True,
        cgroup_parent: str = DEFAULT_PARENT,
        cgroup_root: Path | None = None,
        stop_grace: float = DEFAULT_GRACE,
        max_running: int = 1000,
    ) -> None:
        super().__init__()
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.logs_dir = self.state_dir / "logs"
        self.auth = Authorizer(admins)
        self.stop_grace = stop_grace
        self.max_running = max_running
        self._cgroup_options = (cgroups, cgroup_parent, cgroup_root)
        self._live: dict[str, _Live] = {}
        self._readers = 0
        self._closing = threading.Event()
        self._boot_id = read_boot_id()
        self.cgroups = CgroupSupport(0, {}, "not detected yet")
        self._store: JobStore | None = None

    # --- life cycle -------------------------------------------------------------------------------------

    def load(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._store = JobStore(self.state_dir / "jobs.sqlite3")
        enabled, parent, root = self._cgroup_options
        self.cgroups = detect(root, parent, enabled)
        self.logger.info("%s", self.cgroups.describe())
        self._recover()

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RpcException("jobs service not loaded", ResultCode.ERROR_STATE_UNEXPECTED)
        return self._store

    def begin_shutdown(self) -> None:
        """Refuse new jobs and end the log streams now, so in-flight calls finish within the grace period."""
        self._closing.set()
        with self.lock:
            live = list(self._live.values())
        for job in live:
            job.log.wake()

    def shutdown(self) -> None:
        """Stop running jobs (SIGTERM, SIGKILL after ``stop_grace``), then close the store."""
        self._closing.set()
        with self.lock:
            live = list(self._live.values())
        threads = []
        for job in live:
            job.stop_reason = job.stop_reason or StopReason.SERVER
            if job.proc is not None:
                proc = job.proc
                t = threading.Thread(target=proc.stop, args=(self.stop_grace,), name="job-stop", daemon=True)
                t.start()
                threads.append(t)
            job.log.wake()
        for t in threads:
            t.join()
        if live:
            self.logger.info("stopped %d running job(s) at shutdown", len(live))
        if self._store is not None:
            self._store.close()
            self._store = None

    def _recover(self) -> None:
        """Jobs recorded RUNNING belong to a server that died: kill what is left of them, mark them LOST."""
        for rec in self.store.running():
            victims: set[int] = set()
            if rec.boot_id == self._boot_id:  # after a reboot, pids and cgroups are someone else's
                cg = self.cgroups.open(rec.cgroup) if rec.cgroup else None
                victims = _group_leftovers(rec.pid, rec.start_time) | (cg.pids() if cg else set())
                if rec.pid > 0 and victims:
                    signal_group(rec.pid, signal.SIGKILL)
                if cg is not None:
                    cg.kill_all()
                    cg.remove()
            killed = len(victims)
            self.store.put(
                rec.update(
                    state=State.LOST, stopped_by=StopReason.SERVER, end_time=time.time(),
                    error=f"the server stopped while the job was running ({killed} process(es) killed at restart)",
                )
            )
            self.logger.warning("job %s (pid %d) marked LOST, %d process(es) killed", rec.job_id, rec.pid, killed)

    # --- helpers ------------------------------------------------------------------------------------------

    def _find(self, context: grpc.ServicerContext, job_id: str) -> tuple[str, JobRecord]:
        """The caller and the job it asks for; NOT_FOUND also for jobs of others (existence is not leaked)."""
        who = self.auth.identity(context)
        canonical = ids.parse(job_id)
        if canonical is None:
            raise _bad(f"invalid job id {job_id[:80]!r}: expected a UUID")
        rec = self.store.get(canonical)
        if rec is None or not self.auth.can_access(who, rec.owner):
            raise RpcException(f"unknown job {canonical}", ResultCode.ERROR_ITEM_UNKNOWN)
        return who, rec

    @staticmethod
    def _limits(msg: jobs_pb2.Limits) -> LimitsSpec:
        cpus = msg.cpus
        if not math.isfinite(cpus) or cpus < 0 or (cpus and not 0.01 <= cpus <= (os.cpu_count() or 1)):
            raise _bad(f"cpus must be 0 (no limit) or between 0.01 and {os.cpu_count()} (this host's CPUs): {cpus}")
        total = psutil.virtual_memory().total
        if msg.memory_bytes and not MIN_MEMORY <= msg.memory_bytes <= total:
            raise _bad(f"memory_bytes must be 0 (no limit) or between {MIN_MEMORY} and {total}: {msg.memory_bytes}")
        for name in ("io_read_bps", "io_write_bps"):
            value = getattr(msg, name)
            if value and not 1024 <= value <= MAX_IO_BPS:
                raise _bad(f"{name} must be 0 (no limit) or between 1024 and {MAX_IO_BPS}: {value}")
        if msg.pids > 4_194_304:
            raise _bad(f"pids must be 0 (no limit) or at most 4194304: {msg.pids}")
        return LimitsSpec(cpus, msg.memory_bytes, msg.io_read_bps, msg.io_write_bps, msg.pids)

    @staticmethod
    def _check_command(request: jobs_pb2.RunRequest) -> tuple[list[str], dict[str, str], str]:
        argv = list(request.command)
        if not argv or not argv[0]:
            raise RpcException("empty command", ResultCode.ERROR_PARAM_MISSING)
        if len(argv) > MAX_ARGS or sum(len(a.encode()) + 1 for a in argv) > MAX_ARGV_BYTES:
            raise _bad(f"command too long: at most {MAX_ARGS} arguments and {MAX_ARGV_BYTES} bytes")
        if any("\0" in a for a in argv):
            raise _bad("command arguments cannot contain NUL characters")
        if len(request.env) > MAX_ENV or sum(len(k) + len(v) + 2 for k, v in request.env.items()) > MAX_ARGV_BYTES:
            raise _bad(f"environment too large: at most {MAX_ENV} variables and {MAX_ARGV_BYTES} bytes")
        for key, value in request.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise _bad(f"invalid environment variable name or value: {key[:80]!r}")
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/"}
        env.update(request.env)
        cwd = request.cwd or "/"
        if not os.path.isabs(cwd) or "\0" in cwd:
            raise _bad(f"working directory must be an absolute path: {cwd[:200]!r}")
        return argv, env, cwd

    # --- service methods ----------------------------------------------------------------------------------

    def Run(self, request: jobs_pb2.RunRequest, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        who = self.auth.identity(context)
        argv, env, cwd = self._check_command(request)
        limits = self._limits(request.limits)
        if self._closing.is_set():
            raise RpcException("the server is shutting down", ResultCode.ERROR_STATE_UNEXPECTED)
        with self.lock:
            if len(self._live) >= self.max_running:
                raise RpcException(f"too many running jobs (max {self.max_running})", ResultCode.ERROR_RESOURCE_EXHAUSTED)
        try:
            self.cgroups.check(limits)
        except CgroupError as e:
            raise RpcException(str(e), ResultCode.ERROR_STATE_UNEXPECTED) from None
        job_id = str(ids.uuid7())
        log = JobLog.create(self.logs_dir, job_id)
        try:
            cgroup = self.cgroups.create(job_id, limits)
        except CgroupError as e:
            log.close()
            raise RpcException(str(e), ResultCode.ERROR_STATE_UNEXPECTED) from None
        record = JobRecord(
            job_id, who, tuple(argv), cwd, limits=limits, cgroup=cgroup.name if cgroup else "", boot_id=self._boot_id
        )
        # Recorded before the process exists: if the server dies now, a restart still finds (and kills) it.
        self.store.put(record)
        live = _Live(record, log, cgroup)
        spec = LaunchSpec(argv, env, cwd, cgroup.procs_files if cgroup else ())
        try:
            proc = JobProcess(spec, log)
        except StartError as e:
            log.close()
            if cgroup is not None:
                cgroup.remove()
            record = record.update(
                state=State.FAILED_TO_START, error=f"{e.stage}: {e.message}", end_time=time.time()
            )
            self.store.put(record)
            self.logger.info("job %s of %s failed to start: %s", job_id, who, record.error)
            return to_proto(record)
        live.proc = proc
        live.record = record = record.update(pid=proc.pid)
        self.store.put(record)
        with self.lock:
            self._live[job_id] = live
        proc.start(lambda rc: self._on_exit(live, rc), cgroup.kill_all if cgroup else lambda: None)
        self.logger.info("job %s of %s started: pid %d, %s", job_id, who, proc.pid, argv[0])
        return to_proto(record)

    def _on_exit(self, live: _Live, rc: int) -> None:
        """Final status of a job whose process group is gone and output drained (waiter thread)."""
        rec = live.record
        oom = False
        if live.cgroup is not None:
            oom = live.cgroup.oom_killed()
            live.cgroup.remove()
        stopped_by = live.stop_reason
        if not stopped_by and oom:
            stopped_by = StopReason.OOM
        if rc >= 0:
            rec = rec.update(state=State.EXITED, exit_code=rc, stopped_by=stopped_by, end_time=time.time())
        else:
            rec = rec.update(state=State.KILLED, signal=-rc, stopped_by=stopped_by, end_time=time.time())
        live.record = rec
        try:
            self.store.put(rec)
        except Exception:
            self.logger.exception("cannot record the end of job %s", rec.job_id)
        with self.lock:
            self._live.pop(rec.job_id, None)
        self.logger.info("job %s ended: %s", rec.job_id, rec.state.name)

    def Stop(self, request: jobs_pb2.StopRequest, context: grpc.ServicerContext) -> jobs_pb2.StopResponse:
        _, rec = self._find(context, request.job_id)
        grace = request.grace_seconds if request.HasField("grace_seconds") else DEFAULT_GRACE
        if not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE:
            raise _bad(f"grace_seconds must be between 0 and {MAX_GRACE:g}: {grace}")
        with self.lock:
            live = self._live.get(rec.job_id)
        if live is None or live.proc is None:
            return jobs_pb2.StopResponse(stopped=False, status=to_proto(self.store.get(rec.job_id) or rec))
        if not live.stop_reason:
            live.stop_reason = StopReason.USER
        stopped = live.proc.stop(grace)
        final = self.store.get(rec.job_id) or live.record
        return jobs_pb2.StopResponse(stopped=stopped, status=to_proto(final))

    def Status(self, request: jobs_pb2.JobRequest, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        _, rec = self._find(context, request.job_id)
        return to_proto(rec)

    def List(self, request: jobs_pb2.ListRequest, context: grpc.ServicerContext) -> jobs_pb2.ListResponse:
        who = self.auth.identity(context)
        records = self.store.records(None if self.auth.is_admin(who) else who)
        return jobs_pb2.ListResponse(jobs=[to_proto(r) for r in records])

    def Logs(self, request: jobs_pb2.LogsRequest, context: grpc.ServicerContext) -> Iterator[jobs_pb2.LogChunk]:
        _, rec = self._find(context, request.job_id)
        with self.lock:
            live = self._live.get(rec.job_id)
        log = live.log if live is not None else JobLog.open(self.logs_dir, rec.job_id)
        closing = self._closing

        def cancelled() -> bool:
            return closing.is_set() or not context.is_active()

        def chunk_size() -> int:
            return max(MIN_CHUNK, min(MAX_CHUNK, LOGS_MEMORY_BUDGET // max(1, self._readers)))

        # Wakes this reader when the client goes away or the call is cancelled at server shutdown.
        if not context.add_callback(log.wake):
            return
        with self.lock:
            self._readers += 1
        try:
            for stream, data in log.read(request.follow, cancelled, chunk_size):
                yield jobs_pb2.LogChunk(stream=jobs_pb2.STDOUT if stream == STDOUT else jobs_pb2.STDERR, data=data)
            if request.follow and closing.is_set() and not log.closed:
                # A follower must not mistake the end of this stream for the end of the job.
                raise RpcException("the server is shutting down: the job's output was cut", ResultCode.ERROR_STREAM_SHUTDOWN)
        finally:
            with self.lock:
                self._readers -= 1


def _group_leftovers(pgid: int, started: float) -> set[int]:
    """Processes of group ``pgid`` created since ``started`` (what is left of an earlier run's job)."""
    victims: set[int] = set()
    if pgid <= 0:
        return victims
    for p in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["create_time"] >= started - 1.0:
                victims.add(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return victims
