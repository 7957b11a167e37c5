"""Process supervision: start a job sandboxed in its own session, pump its output, stop it.

A job is started by the exec helper ``_sandbox_exec`` (a small C program, built at install time, see
:mod:`grpc_helper.jobs._exec`), spawned with :class:`subprocess.Popen` (vfork + exec in C, new session; no
``preexec_fn``, unsafe in a threaded server). Before exec'ing the command, the helper joins the job's cgroups
(writing its own pid while still privileged), creates the namespaces asked for, drops the supplementary groups,
switches to the job's user, sets ``no_new_privs`` and changes directory as that user. It reports a failure
on a close-on-exec pipe (EOF without data: the job was exec'd), which the server reads with ``poll`` (no
``select``: no limit on descriptor numbers). A failed start leaves nothing behind: the helper is reaped and
every descriptor closed (the caller removes the cgroup it created).

Why a C helper (measured, ``bench/jobs_spawn.py``): a Python helper (the previous design) costs an interpreter
start per job (44 ms); Popen's ``user``/``group``/``extra_groups`` cannot set ``no_new_privs``, join a cgroup v1
or create namespaces, and ``clone3(CLONE_INTO_CGROUP)`` exists on cgroup v2 only. The helper is built without
libc (a static glibc start-up alone costs ~0.5 ms here) and joins v1 cgroups through ``tasks`` (no RCU grace
period, 8 ms on a loaded host). A default job start (run as ``nobody``, PID namespace, four v1 cgroups) took
1.0 ms against 0.28 ms for a bare ``Popen(["true"])`` in the quietest run (ratio 3.6), more on a busy machine.

Additions to the interface (existing callers unchanged): :class:`LaunchSpec` takes ``run_as`` and
``isolation`` (defaults: ``nobody`` when the server is root, own PID namespace where available; see
:mod:`grpc_helper.jobs.sandbox`); :class:`StartError` stages ``user`` and ``sandbox``. With a PID namespace,
:attr:`JobProcess.pid` is the helper's pid: it leads the process group and ends the way the job ended.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpc_helper.jobs import _exec
from grpc_helper.jobs.logs import JobLog
from grpc_helper.jobs.sandbox import Isolation, SandboxError, resolve_user, support

_LOG = logging.getLogger(__name__)
_PIPE_SIZE = 1 << 20  # bigger pipes: fewer wake-ups and syscalls for chatty jobs
_READ_SIZE = 1 << 20
_SMALL_READ = 64 << 10  # after moving less than this, the pump waits _SETTLE before looking at the pipes again
_SETTLE = 0.0005  # seconds; the pipe (_PIPE_SIZE) holds more than a fast job writes meanwhile
_SPAWN_TIMEOUT = 30.0  # the helper only makes a few system calls before exec: anything longer is a broken host
_DRAIN_TIMEOUT = 5.0  # after the group is gone, how long an escaped process may keep our pipes open
_PATH_STAGES = ("cwd", "cgroup", "exec")  # stages whose report names a path or command


class StartError(Exception):
    """The command could not be started; ``stage`` is one of spec, cwd, cgroup, exec, spawn, user, sandbox."""

    def __init__(self, stage: str, err: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = err
        self.message = message


@dataclass(frozen=True)
class LaunchSpec:
    """What to run: argv (no shell), full environment, working directory, cgroup.procs files to join,
    the user to run as (name or uid; None: ``nobody`` when the server is root, else the server's user) and the
    namespaces (None: :meth:`SandboxSupport.default`, an own PID namespace where available)."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: str
    cgroup_procs: Sequence[str] = field(default_factory=tuple)
    run_as: str | int | None = None
    isolation: Isolation | None = None


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        _LOG.warning("not allowed to signal process group %d", pgid)
        return False
    return True


def _set_pipe_size(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # a smaller pipe only costs throughput
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class JobProcess:
    """A running job: the process (session and group leader), an output pump thread and a waiter thread.

    Once the leader exits the rest of its process group is killed, the output is drained to the log,
    ``on_exit`` runs and the log is closed, then :attr:`done` is set.
    """

    def __init__(self, spec: LaunchSpec, log: JobLog) -> None:
        """Start the command (raises :class:`StartError`); call :meth:`start` to supervise it."""
        self._log = log
        self._wake_r, self._wake_w = os.pipe()  # before the spawn: nothing can fail once the job runs
        try:
            self._proc, self._init_fd = self._spawn(spec)
        except BaseException:
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self.pid = self._proc.pid
        self.done = threading.Event()
        self._on_exit: Callable[[int], None] = lambda rc: None
        self._kill_rest: Callable[[], None] = lambda: None
        self._pump = threading.Thread(target=self._pump_output, name=f"job-io-{self.pid}", daemon=True)
        self._waiter = threading.Thread(target=self._wait, name=f"job-wait-{self.pid}", daemon=True)

    def start(self, on_exit: Callable[[int], None], kill_rest: Callable[[], None]) -> None:
        """Start pumping output and waiting; ``on_exit(returncode)`` runs once the output is complete,
        just before the log is closed; ``kill_rest()`` kills what may remain outside the process group."""
        self._on_exit = on_exit
        self._kill_rest = kill_rest
        self._pump.start()
        self._waiter.start()

    @staticmethod
    def _spawn(spec: LaunchSpec) -> tuple[subprocess.Popen[bytes], int]:
        """The running helper and a pidfd of the namespace's init (-1 without a PID namespace)."""
        args = _helper_args(spec)
        err_r, err_w = os.pipe()
        try:
            try:
                proc = subprocess.Popen(
                    [args[0], str(err_w), *args[1:]],
                    env=spec.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(err_w,),
                    start_new_session=True,  # own session and process group, set up by the C fork code
                    close_fds=True,
                )
            except OSError as e:
                raise StartError("spawn", e.errno or 0, f"cannot start the exec helper: {e}") from e
            os.close(err_w)
            err_w = -1
            init_fd = -1
            try:
                report = _read_report(err_r)
                if report.startswith(b"pid:"):
                    line, _, report = report.partition(b"\n")
                    init_fd = _pidfd(int(line[4:]))
                if report:
                    raise _start_error(report)
            except BaseException:
                if init_fd >= 0:
                    os.close(init_fd)
                _discard(proc)
                raise
            return proc, init_fd
        finally:
            os.close(err_r)
            if err_w >= 0:
                os.close(err_w)

    def _pump_output(self) -> None:
        """Copy stdout/stderr pipes to the log files as data comes (one thread, poll on both pipes)."""
        assert self._proc.stdout is not None and self._proc.stderr is not None
        fds = {self._proc.stdout.fileno(): 0, self._proc.stderr.fileno(): 1}
        for fd in fds:
            _set_pipe_size(fd)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        open_fds = set(fds)
        splice = hasattr(os, "splice")
        try:
            while open_fds:
                # Wake-ups of the log's readers are batched while output keeps coming (see JobLog.write).
                due = self._log.held_wakeup()
                if due == 0:
                    self._log.release_wakeup()
                    due = None
                events = poller.poll(None if due is None else due * 1000)
                if not events:
                    self._log.release_wakeup()
                moved = 0
                for fd, _event in events:
                    if fd == self._wake_r:
                        open_fds.clear()  # drain timeout: stop following pipes held by escaped processes
                        break
                    n = 0
                    if splice:
                        try:
                            n = self._log.splice_from(fds[fd], fd, _READ_SIZE, batch=True)
                        except OSError:
                            splice = False  # e.g. a file system without splice support: copy instead
                    if not splice:
                        data = os.read(fd, _READ_SIZE)
                        n = len(data)
                        if data:
                            self._log.write(fds[fd], data, batch=True)
                    if not n:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                    moved = max(moved, n)
                if 0 < moved < _SMALL_READ:
                    # The job writes in small pieces (head: 4 KiB): let them gather in the pipe rather than pay a
                    # wake-up and Python's bookkeeping (and the GIL, shared with the server's loop) per piece.
                    time.sleep(_SETTLE)
        except Exception:
            _LOG.exception("output pump of job pid %d failed", self.pid)
        finally:
            self._log.release_wakeup()
            self._proc.stdout.close()
            self._proc.stderr.close()

    def _wait(self) -> None:
        try:
            # Wait without reaping: while the leader is a zombie its pid (= the group id) cannot be reused,
            # so killing the rest of the group cannot hit an unrelated process.
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # retried on EINTR by Python
            # The job is its leader: once it is gone, nothing of the group may outlive it.
            signal_group(self.pid, signal.SIGKILL)
        except ChildProcessError:
            pass
        if self._init_fd >= 0:
            # The helper may have been killed before the namespace's init: its end (after the kernel killed
            # and reaped the rest of the namespace) is the end of the job's processes.
            _wait_exit(self._init_fd, _DRAIN_TIMEOUT)
        rc = self._proc.wait()
        try:
            self._kill_rest()
            self._pump.join(_DRAIN_TIMEOUT)
            if self._pump.is_alive():
                os.write(self._wake_w, b"x")
                self._pump.join()
            # Final status first, then end of log: a reader whose follow ended sees the final status.
            self._on_exit(rc)
        except Exception:
            _LOG.exception("supervision of job pid %d failed", self.pid)
        finally:
            self._log.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.done.set()

    def signal(self, sig: int) -> bool:
        """Signal the whole process group (False if it is gone)."""
        if self.done.is_set():
            return False
        return signal_group(self.pid, sig)

    def stop(self, grace: float) -> bool:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; wait for the end. False if already ended."""
        if not self.signal(signal.SIGTERM) and self.done.is_set():
            return False
        if not self.done.wait(grace):
            self.signal(signal.SIGKILL)
        self.done.wait(grace + _DRAIN_TIMEOUT + 10.0)
        return True


def _helper_args(spec: LaunchSpec) -> list[str]:
    """The helper's command line but its error descriptor: [helper, flags, uid, gid, cwd, n, procs..., --, argv...]."""
    try:
        helper = _exec.helper()
        user = resolve_user(spec.run_as)
        host = support()
        isolation = host.default() if spec.isolation is None else spec.isolation
        host.check(isolation)
    except _exec.HelperError as e:
        raise StartError("spawn", errno.ENOENT, str(e)) from None
    except SandboxError as e:
        raise StartError(e.stage, e.errno, e.message) from None
    flags = isolation.flags() + ("u" if user.switch else "")
    joins = [_join_file(p) for p in spec.cgroup_procs]
    return [helper, flags, str(user.uid), str(user.gid), spec.cwd, str(len(joins)), *joins, "--", *spec.argv]


def _join_file(procs: str) -> str:
    """The file the (single-threaded) job process writes "0" to, to join a cgroup.

    On cgroup v1, the ``tasks`` file: moving only the calling thread skips the kernel's global threadgroup
    lock, whose write side waits for an RCU grace period (measured 8 ms median on a loaded host, against
    0.07 ms); for a single-threaded process it moves the whole process. On v2, ``cgroup.procs``.
    """
    if procs.endswith("/cgroup.procs"):
        tasks = procs[: -len("cgroup.procs")] + "tasks"
        if os.path.exists(tasks):
            return tasks
    return procs


def _read_report(fd: int) -> bytes:
    """The helper's failure report, b"" once the job was exec'd (EOF); poll has no limit on fd numbers."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    report = b""
    while True:
        if not poller.poll(_SPAWN_TIMEOUT * 1000):
            raise StartError("spawn", errno.ETIMEDOUT, f"exec helper did not answer within {_SPAWN_TIMEOUT:g} s")
        data = os.read(fd, 65536)
        if not data:
            return report
        report += data


def _pidfd(pid: int) -> int:
    """A pidfd of ``pid`` (-1 if the kernel has none or the process is already gone)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return -1


def _wait_exit(pidfd: int, timeout: float) -> None:
    """Wait until the process of ``pidfd`` ended (bounded), then close the pidfd."""
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            _LOG.warning("a job's namespace init did not end within %g s", timeout)
    finally:
        os.close(pidfd)


def _discard(proc: subprocess.Popen[bytes]) -> None:
    """Kill a helper whose start failed (and its group; a failed helper exits by itself), reap it, close its pipes."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _start_error(report: bytes) -> StartError:
    """Parse ``stage:errno:detail`` from the helper."""
    stage, err, detail = ([*report.decode(errors="replace").split(":", 2), "", ""])[:3]
    if not err.isdigit():
        return StartError("spawn", 0, f"exec helper failed: {report[:200]!r}")
    code = int(err)
    reason = os.strerror(code)
    message = f"{reason}: {detail!r}" if stage in _PATH_STAGES else f"{detail}: {reason}"
    return StartError(stage, code, message[:1000])


def read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
