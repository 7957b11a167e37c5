"""Starting a job: the blocking steps (log files, cgroup, record, sandboxed process), run in a spawner thread.

A launch either returns a started job, or a job that failed to start (its record says why), or raises
``RpcException`` when the server cannot take it (no space: RESOURCE_EXHAUSTED; limits or namespaces the host
cannot apply: FAILED_PRECONDITION), leaving nothing behind.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from grpc_helper import ResultCode, RpcException
from grpc_helper.jobs import ids
from grpc_helper.jobs.cgroups import CgroupError, CgroupSupport, JobCgroup
from grpc_helper.jobs.limits import JobsLimits, size_text
from grpc_helper.jobs.logs import JobLog, StopCallback, remove
from grpc_helper.jobs.process import JobProcess, LaunchSpec, StartError
from grpc_helper.jobs.records import Records
from grpc_helper.jobs.sandbox import Isolation, JobUser, SandboxError, resolve_user, support
from grpc_helper.jobs.statedir import StateDir
from grpc_helper.jobs.store import JobRecord, LimitsSpec, State, StopReason, StoreFull

_EXHAUSTED = (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE)


@dataclass
class LiveJob:
    """A running job's runtime objects."""

    record: JobRecord
    log: JobLog | None = None
    cgroup: JobCgroup | None = None
    proc: JobProcess | None = None
    stop_reason: StopReason = StopReason.NONE
    error: str = ""
    ended: asyncio.Future[None] | None = field(default=None, repr=False)


class Launcher:
    """What every launch needs; built at load, which checks the accounts and namespaces once (an unknown account
    or a namespace the host lacks raises ``RpcException`` and stops the server from starting)."""

    def __init__(
        self,
        state: StateDir,
        limits: JobsLimits,
        cgroups: CgroupSupport,
        records: Records,
        boot_id: str,
        run_as: tuple[str | int | None, Mapping[str, str | int]],
        isolation: Isolation | None,
        on_log_stop: Callable[[LiveJob], StopCallback],
    ) -> None:
        self.state, self.limits, self.cgroups, self.records = state, limits, cgroups, records
        self._boot_id = boot_id
        self._on_log_stop = on_log_stop
        default, mapping = run_as
        try:
            #: Account per client name (None: everybody else).
            self.users: dict[str | None, JobUser] = {None: resolve_user(default)}
            self.users.update({name: resolve_user(user) for name, user in mapping.items()})
            self.isolation = isolation or support().default()
            support().check(self.isolation)
        except SandboxError as e:
            raise RpcException(f"jobs sandbox: {e.message}", ResultCode.ERROR_STATE_UNEXPECTED) from None

    def isolation_for(self, no_network: bool, private_tmp: bool) -> Isolation:
        """The server's namespaces plus those a Run request adds."""
        base = self.isolation
        return Isolation(base.pid, base.net or no_network, base.tmp or private_tmp)

    def launch(
        self, who: str, argv: list[str], env: dict[str, str], cwd: str, limits: LimitsSpec, isolation: Isolation
    ) -> LiveJob:
        """Create the job's log, cgroup and record, then start its process (blocking: a spawner thread).

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
        user = self.users.get(who) or self.users[None]
        job_id = str(ids.uuid7())
        namespaces = ",".join(n for n in ("pid", "net", "tmp") if getattr(isolation, n))
        live = LiveJob(JobRecord(job_id, who, tuple(argv), cwd, limits=limits, boot_id=self._boot_id, user=user.name,
                               namespaces=namespaces))
        try:
            live.log = JobLog.create(self.state.logs, job_id, lim.max_log_bytes, self._on_log_stop(live))
        except OSError as e:
            code = ResultCode.ERROR_RESOURCE_EXHAUSTED if e.errno in _EXHAUSTED else ResultCode.ERROR_STATE_UNEXPECTED
            raise RpcException(f"cannot create the job's log files: {e.strerror}", code) from None
        try:
            live.cgroup = self.cgroups.create(job_id, limits)
        except CgroupError as e:
            self.discard(live)
            raise RpcException(str(e), ResultCode.ERROR_STATE_UNEXPECTED) from None
        live.record = live.record.update(cgroup=live.cgroup.name if live.cgroup else "")
        # Recorded before the process exists: if the server dies now, a restart still finds (and kills) it.
        try:
            self.records.store.put(live.record)
        except StoreFull as e:
            self.discard(live)
            raise RpcException(f"the state directory's file system is full: {e}", ResultCode.ERROR_RESOURCE_EXHAUSTED) from None
        except BaseException:
            self.discard(live)
            raise
        spec = LaunchSpec(argv, env, cwd, live.cgroup.procs_files if live.cgroup else (), user.name, isolation)
        try:
            live.proc = JobProcess(spec, live.log)
        except StartError as e:
            self.discard(live, keep_log=True)
            live.record = live.record.update(
                state=State.FAILED_TO_START, error=f"{e.stage}: {e.message}", end_time=time.time()
            )
            self.records.save(live.record)
            return live
        live.record = live.record.update(pid=live.proc.pid)
        self.records.save(live.record)
        return live

    def discard(self, live: LiveJob, keep_log: bool = False) -> None:
        """Undo a launch that did not start: close (or remove) the log, remove the cgroup."""
        if live.log is not None:
            live.log.close()
            if not keep_log:
                remove(self.state.logs, live.record.job_id)
        if live.cgroup is not None:
            live.cgroup.remove()
