"""Process supervision: start a job in its own session through the exec helper, pump its output, stop it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpc_helper.jobs import _exec
from grpc_helper.jobs.logs import JobLog

_LOG = logging.getLogger(__name__)
_PIPE_SIZE = 1 << 20  # bigger pipes: fewer wake-ups and syscalls for chatty jobs
_READ_SIZE = 1 << 20
_SPAWN_TIMEOUT = 30.0  # the helper only parses a spec and execs: anything longer is a broken host
_DRAIN_TIMEOUT = 5.0  # after the group is gone, how long an escaped process may keep our pipes open


class StartError(Exception):
    """The command could not be started; ``stage`` is one of spec, cwd, cgroup, exec, spawn."""

    def __init__(self, stage: str, err: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = err
        self.message = message


@dataclass(frozen=True)
class LaunchSpec:
    """What to run: argv (no shell), full environment, working directory, cgroup.procs files to join."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: str
    cgroup_procs: Sequence[str] = field(default_factory=tuple)


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
        self._proc = self._spawn(spec)
        self.pid = self._proc.pid
        self.done = threading.Event()
        self._on_exit: Callable[[int], None] = lambda rc: None
        self._kill_rest: Callable[[], None] = lambda: None
        self._wake_r, self._wake_w = os.pipe()
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
    def _spawn(spec: LaunchSpec) -> subprocess.Popen[bytes]:
        spec_r, spec_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", _exec.__file__, str(spec_r), str(err_w)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(spec_r, err_w),
                    start_new_session=True,  # own session and process group, set up by the C fork code
                    close_fds=True,
                )
            except OSError as e:
                raise StartError("spawn", e.errno or 0, f"cannot start the exec helper: {e}") from e
            os.close(spec_r)
            spec_r = -1
            os.close(err_w)
            err_w = -1
            payload = json.dumps(
                {"argv": list(spec.argv), "env": spec.env, "cwd": spec.cwd, "cgroups": list(spec.cgroup_procs)}
            ).encode()
            try:
                with os.fdopen(spec_w, "wb") as f:
                    spec_w = -1
                    f.write(payload)
            except BrokenPipeError:
                pass  # the helper died early: its report (or exit code) tells why
            report = b""
            while True:
                ready, _, _ = select.select([err_r], [], [], _SPAWN_TIMEOUT)
                if not ready:
                    proc.kill()
                    raise StartError("spawn", errno.ETIMEDOUT, "exec helper did not answer")
                data = os.read(err_r, 65536)
                if not data:
                    break
                report += data
            if report:  # EOF without a report: exec succeeded (the command may even have ended already)
                proc.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                try:
                    info = json.loads(report)
                    raise StartError(info["stage"], int(info["errno"]), str(info["error"]))
                except (ValueError, KeyError):
                    raise StartError("spawn", 0, f"exec helper failed: {report[:200]!r}") from None
            return proc
        finally:
            for fd in (spec_r, spec_w, err_w, err_r):
                if fd >= 0:
                    os.close(fd)

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
                for fd, _event in poller.poll():
                    if fd == self._wake_r:
                        open_fds.clear()  # drain timeout: stop following pipes held by escaped processes
                        break
                    n = 0
                    if splice:
                        try:
                            n = self._log.splice_from(fds[fd], fd, _READ_SIZE)
                        except OSError:
                            splice = False  # e.g. a file system without splice support: copy instead
                    if not splice:
                        data = os.read(fd, _READ_SIZE)
                        n = len(data)
                        if data:
                            self._log.write(fds[fd], data)
                    if not n:
                        poller.unregister(fd)
                        open_fds.discard(fd)
        except Exception:
            _LOG.exception("output pump of job pid %d failed", self.pid)
        finally:
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


def read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
