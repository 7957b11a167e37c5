"""Request checks (every bad field gets INVALID_ARGUMENT with a bounded message) and the wire form of records."""

from __future__ import annotations

import math
import os

import psutil

from grpc_helper import ResultCode, RpcException
from grpc_helper.jobs import ids
from grpc_helper.jobs.api import jobs_pb2
from grpc_helper.jobs.store import JobRecord, LimitsSpec, Page, State

MAX_ARGS = 4096
MAX_ARGV_BYTES = 1 << 20
MAX_ENV = 1024
MAX_GRACE = 300.0
DEFAULT_GRACE = 5.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_MEMORY = 4 << 20
MAX_IO_BPS = 1 << 40
MAX_PIDS = 4_194_304
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def bad(message: str) -> RpcException:
    return RpcException(message, ResultCode.ERROR_PARAM_INVALID)


def job_id(text: str) -> str:
    """The canonical job id, or INVALID_ARGUMENT."""
    canonical = ids.parse(text)
    if canonical is None:
        raise bad(f"invalid job id {text[:80]!r}: expected a UUID")
    return canonical


def limits(msg: jobs_pb2.Limits) -> LimitsSpec:
    cpus = msg.cpus
    if not math.isfinite(cpus) or cpus < 0 or (cpus and not 0.01 <= cpus <= (os.cpu_count() or 1)):
        raise bad(f"cpus must be 0 (no limit) or between 0.01 and {os.cpu_count()} (this host's CPUs): {cpus}")
    total = psutil.virtual_memory().total
    if msg.memory_bytes and not MIN_MEMORY <= msg.memory_bytes <= total:
        raise bad(f"memory_bytes must be 0 (no limit) or between {MIN_MEMORY} and {total}: {msg.memory_bytes}")
    for name in ("io_read_bps", "io_write_bps"):
        value = getattr(msg, name)
        if value and not 1024 <= value <= MAX_IO_BPS:
            raise bad(f"{name} must be 0 (no limit) or between 1024 and {MAX_IO_BPS}: {value}")
    if msg.pids > MAX_PIDS:
        raise bad(f"pids must be 0 (no limit) or at most {MAX_PIDS}: {msg.pids}")
    return LimitsSpec(cpus, msg.memory_bytes, msg.io_read_bps, msg.io_write_bps, msg.pids)


def command(request: jobs_pb2.RunRequest) -> tuple[list[str], dict[str, str], str]:
    """argv, full environment and working directory of a Run request."""
    argv = list(request.command)
    if not argv or not argv[0]:
        raise RpcException("empty command", ResultCode.ERROR_PARAM_MISSING)
    if len(argv) > MAX_ARGS or sum(len(a.encode()) + 1 for a in argv) > MAX_ARGV_BYTES:
        raise bad(f"command too long: at most {MAX_ARGS} arguments and {MAX_ARGV_BYTES} bytes")
    if any("\0" in a for a in argv):
        raise bad("command arguments cannot contain NUL characters")
    if len(request.env) > MAX_ENV or sum(len(k) + len(v) + 2 for k, v in request.env.items()) > MAX_ARGV_BYTES:
        raise bad(f"environment too large: at most {MAX_ENV} variables and {MAX_ARGV_BYTES} bytes")
    for key, value in request.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise bad(f"invalid environment variable name or value: {key[:80]!r}")
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/"}
    env.update(request.env)
    cwd = request.cwd or "/"
    if not os.path.isabs(cwd) or "\0" in cwd:
        raise bad(f"working directory must be an absolute path: {cwd[:200]!r}")
    return argv, env, cwd


def grace(request: jobs_pb2.StopRequest) -> float:
    value = request.grace_seconds if request.HasField("grace_seconds") else DEFAULT_GRACE
    if not math.isfinite(value) or not 0 <= value <= MAX_GRACE:
        raise bad(f"grace_seconds must be between 0 and {MAX_GRACE:g}: {value}")
    return value


def page(request: jobs_pb2.ListRequest, caller: str, admin: bool) -> Page:
    """The records a List request asks for, as the caller may see them: its own unless it is an admin."""
    owner: str | None = request.owner or None
    if owner is not None and owner != caller and not admin:
        raise RpcException(
            f"only administrators can list other clients' jobs (asked for {owner[:80]!r})",
            ResultCode.ERROR_PERMISSION_DENIED,
        )
    if owner is None and not admin:
        owner = caller
    known = {int(s) for s in State} - {int(State.UNKNOWN)}
    states = []
    for value in request.states:
        if int(value) not in known:
            raise bad(f"unknown job state in filter: {int(value)}")
        states.append(State(value))
    after = ""
    if request.page_token:
        after = ids.parse(request.page_token) or ""
        if not after:
            raise bad(f"invalid page_token {request.page_token[:80]!r}: pass next_page_token of the previous page")
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return Page(size, after, owner, tuple(sorted(set(states))), request.newest_first)


def to_proto(r: JobRecord) -> jobs_pb2.JobStatus:
    """The wire form of a record."""
    lim = r.limits
    return jobs_pb2.JobStatus(
        job_id=r.job_id, owner=r.owner, command=r.command, cwd=r.cwd, state=jobs_pb2.JobState.ValueType(r.state),
        exit_code=r.exit_code, signal=r.signal, stopped_by=jobs_pb2.StopReason.ValueType(r.stopped_by), error=r.error,
        pid=r.pid, start_time=r.start_time, end_time=r.end_time, cgroup=r.cgroup, user=r.user, namespaces=r.namespaces,
        limits=jobs_pb2.Limits(
            cpus=lim.cpus, memory_bytes=lim.memory_bytes, io_read_bps=lim.io_read_bps,
            io_write_bps=lim.io_write_bps, pids=lim.pids,
        ),
    )
