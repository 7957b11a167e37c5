"""Worker processes started by the controller (``start_worker``): spawned, listed, stopped at shutdown."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger("grpc_helper.grid.spawner")

#: Handler run by spawned workers of a service without an entry in the handlers mapping.
DEFAULT_HANDLER = "grpc_helper.grid.handlers:echo"
#: Longest start_worker command accepted (parsed before anything else, in linear time).
MAX_COMMAND = 1024


@dataclass(frozen=True)
class WorkerSpec:
    """A parsed ``"<SERVER_ADDRESS> <CLIENT_DESCRIPTION> <SERVICE_ID> <SERVICE_VERSION>"``."""

    address: str
    description: str
    service_id: str
    service_version: str

    @classmethod
    def parse(cls, command: str) -> WorkerSpec:
        """Parse the start_worker string (shell quoting allowed, e.g. a description with spaces in quotes)."""
        if len(command) > MAX_COMMAND:
            raise ValueError(f"command of {len(command)} characters exceeds {MAX_COMMAND}")
        try:
            parts = shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"cannot parse {command[:100]!r}: {exc}") from None
        if len(parts) != 4 or not all(parts):
            raise ValueError(
                f"expected '<SERVER_ADDRESS> <CLIENT_DESCRIPTION> <SERVICE_ID> <SERVICE_VERSION>', got {command[:100]!r}"
            )
        return cls(*parts)


class WorkerSpawner:
    """Owns the worker processes it starts; ``stop_all`` terminates them (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        handlers: Mapping[str, str] | None = None,
        *,
        default_handler: str = DEFAULT_HANDLER,
        worker_args: Sequence[str] = (),
        python: str = sys.executable,
        max_running: int = 16,
    ) -> None:
        self.handlers = dict(handlers or {})
        self.default_handler = default_handler
        self.worker_args = tuple(worker_args)
        self.python = python
        self.max_running = max_running
        self._lock = threading.Lock()
        self._procs: list[tuple[WorkerSpec, str, subprocess.Popen[bytes]]] = []
        self._closed = False

    def handler_for(self, service_id: str) -> str:
        return self.handlers.get(service_id, self.default_handler)

    def spawn(self, spec: WorkerSpec) -> tuple[int, str]:
        """Start ``python -m grpc_helper.grid worker ...`` for the spec; returns (pid, handler)."""
        handler = self.handler_for(spec.service_id)
        argv = [
            self.python,
            "-m",
            "grpc_helper.grid",
            "worker",
            "--endpoint",
            spec.address,
            "--description",
            spec.description,
            "--service",
            spec.service_id,
            "--version",
            spec.service_version,
            *self.worker_args,
            handler,
        ]
        with self._lock:
            if self._closed:
                raise RuntimeError("the grid is shutting down")
            self._prune()
            running = sum(1 for _, _, proc in self._procs if proc.poll() is None)
            if running >= self.max_running:
                raise OverflowError(f"{running} spawned workers are running: max_spawned={self.max_running}")
            # New session: a Ctrl+C in the server's terminal must not reach workers the manager stops itself.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
            self._procs.append((spec, handler, proc))
        _log.info("spawned worker pid %d: %s", proc.pid, shlex.join(argv[2:]))
        return proc.pid, handler

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            self._prune()
            return [
                {
                    "pid": proc.pid,
                    "description": spec.description,
                    "service_id": spec.service_id,
                    "service_version": spec.service_version,
                    "handler": handler,
                    "returncode": proc.poll(),
                }
                for spec, handler, proc in self._procs
            ]

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every spawned worker: those already told to stop (STOP command) get half of ``timeout`` to
        exit on their own, then the rest get SIGTERM (they drain), and those that still linger SIGKILL."""
        with self._lock:
            self._closed = True
            procs = [proc for _, _, proc in self._procs]
        deadline = time.monotonic() + timeout
        # A SIGTERM racing a worker's own exit would kill it in its teardown: let it finish first.
        self._wait_all(procs, time.monotonic() + timeout / 2)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._wait_all(procs, deadline):
            _log.warning("worker pid %d did not stop in %gs: killed", proc.pid, timeout)
            proc.kill()
            proc.wait()

    @staticmethod
    def _wait_all(procs: list[subprocess.Popen[bytes]], deadline: float) -> list[subprocess.Popen[bytes]]:
        """Wait until ``deadline`` for the processes to exit; returns those still running."""
        running = []
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                running.append(proc)
        return running

    def _prune(self) -> None:
        # poll() reaps exited children (no zombies); keep a few exited entries for status.
        exited = [entry for entry in self._procs if entry[2].poll() is not None]
        for entry in exited[:-20]:
            self._procs.remove(entry)
