"""``GridWorker``: runs a handler for the jobs of one (service_id, service_version), over one bidi stream.

Threads: the caller's thread reads the server's messages, ``concurrency`` runner threads call the handler,
and gRPC pulls outgoing messages (results, hand-backs, heartbeats) from a generator. Every wait is on a
condition; the only timed wait is the heartbeat when there is nothing else to send.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import grpc

from grpc_helper import ResultCode, RpcClient, RpcException
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.endpoint import split_endpoint

_log = logging.getLogger("grpc_helper.grid.worker")

#: Exit code of a worker stopped by a second Ctrl+C / SIGTERM (its jobs go back to the queue).
EXIT_ABORTED = 130

_BATCH_BYTES = 2 * 1024 * 1024


class GridWorker:
    """Serve jobs of ``(service_id, version)`` with ``handler(bytes) -> bytes``.

    :param endpoint: grid server address, ``"host:port"``.
    :param concurrency: jobs run at the same time (threads: use several worker processes for CPU-bound work).
    :param prefetch: extra jobs the server sends ahead of time (default: ``max(8, 2 * concurrency)``).
    :param credentials: ``grpc.ChannelCredentials`` for a TLS server.
    :param connect_timeout: how long ``run()`` waits for an unreachable server before failing.

    ``run()`` blocks until the worker is stopped: by ``stop()``, by the controller's ``stop_worker``, or by
    Ctrl+C/SIGTERM (when run in the main thread): running jobs finish, unstarted ones are handed back, the
    worker deregisters and ``run()`` returns 0. A second signal (or ``abort()``) leaves at once: the server
    re-queues the jobs, ``run()`` returns ``EXIT_ABORTED``.

    Example::

        GridWorker("127.0.0.1:50051", "upper", "1", bytes.upper, concurrency=4).run()
    """

    def __init__(
        self,
        endpoint: str,
        service_id: str,
        version: str | int,
        handler: Callable[[bytes], bytes],
        *,
        concurrency: int = 1,
        prefetch: int | None = None,
        description: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.endpoint = endpoint
        self.service_id = service_id
        self.version = str(version)
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = max(8, 2 * concurrency) if prefetch is None else prefetch
        self.description = description or f"{socket.gethostname()}:{os.getpid()}"
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        #: Set once the server accepted the registration (``worker_id`` is known then).
        self.registered = threading.Event()
        self.worker_id = 0
        self.jobs_done = 0
        self.jobs_failed = 0
        self._cond = threading.Condition()
        self._jobs: deque[pb.Job] = deque()
        self._results: list[pb.WorkerResult] = []
        self._give_back: list[int] = []
        self._running = 0
        self._draining = False
        self._drain_sent = False
        self._aborted = False
        self._finished = False
        self._heartbeat = 2.0
        self._client: RpcClient | None = None

    # ---- control (thread-safe) ----

    def stop(self) -> None:
        """Drain: finish running jobs, hand back the others, deregister; ``run()`` then returns 0."""
        with self._cond:
            if self._draining:
                return
            self._draining = True
            self._give_back.extend(job.job_id for job in self._jobs)
            self._jobs.clear()
            self._cond.notify_all()

    def abort(self) -> None:
        """Leave at once (the server re-queues this worker's jobs); ``run()`` returns ``EXIT_ABORTED``."""
        with self._cond:
            self._aborted = True
            self._draining = True
            self._cond.notify_all()
            client = self._client
        if client is not None:
            client.close()

    # ---- main loop ----

    def run(self, *, install_signals: bool = True) -> int:
        """Serve until stopped; returns 0 after a clean stop, ``EXIT_ABORTED`` after ``abort()``.

        Raises ``RpcException`` when the server cannot be reached or drops the stream.
        """
        restore = self._install_signals() if install_signals else None
        runners = [
            threading.Thread(target=self._runner, name=f"grid-runner-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for runner in runners:
            runner.start()
        try:
            return self._serve()
        finally:
            with self._cond:
                self._finished = True
                self._draining = True
                self._cond.notify_all()
            if not self._aborted:
                for runner in runners:
                    runner.join(timeout=5)
            if restore is not None:
                restore()

    def _serve(self) -> int:
        host, port = split_endpoint(self.endpoint)
        deadline = time.monotonic() + self.connect_timeout
        while True:
            with self._cond:
                if self._aborted:
                    return EXIT_ABORTED
            client = RpcClient(
                host,
                port,
                {"grid_worker": (pb_grpc.GridWorkerServiceStub, pb.GRID_API_CURRENT)},
                timeout=max(0.1, deadline - time.monotonic()),
                name=self.description,
                credentials=self.credentials,
            )
            with self._cond:
                self._client = client
            try:
                for message in client.grid_worker.work(self._requests(), timeout=None):
                    self._on_message(message)
                with self._cond:
                    if self._aborted:
                        return EXIT_ABORTED
                    if self._draining:
                        _log.info("worker %d stopped (%d jobs done)", self.worker_id, self.jobs_done)
                        return 0
                raise RpcException("the grid server closed the worker stream", ResultCode.ERROR_STREAM_SHUTDOWN)
            except RpcException as exc:
                with self._cond:
                    if self._aborted:
                        return EXIT_ABORTED
                # Not registered yet and the server is not up: try again until connect_timeout.
                if self.registered.is_set() or exc.rc != ResultCode.ERROR_RPC or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)  # the channel is gone: back off before a fresh one
            finally:
                client.close()

    def _on_message(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("msg")
        if kind == "jobs":
            with self._cond:
                if self._draining:
                    self._give_back.extend(job.job_id for job in message.jobs.jobs)
                else:
                    self._jobs.extend(message.jobs.jobs)
                self._cond.notify_all()
        elif kind == "registered":
            with self._cond:
                self.worker_id = message.registered.worker_id
                self._heartbeat = message.registered.heartbeat_interval or self._heartbeat
            self.registered.set()
            _log.info("worker %d registered for %s/%s", self.worker_id, self.service_id, self.version)
        elif kind == "command" and message.command.command == pb.WORKER_COMMAND_STOP:
            _log.info("worker %d: stop requested by the server", self.worker_id)
            self.stop()

    def _requests(self) -> Iterator[pb.WorkerMessage]:
        yield pb.WorkerMessage(
            register=pb.WorkerRegister(
                description=self.description,
                service_id=self.service_id,
                service_version=self.version,
                concurrency=self.concurrency,
                prefetch=self.prefetch,
                pid=os.getpid(),
                host=socket.gethostname(),
            )
        )
        cond = self._cond
        while True:
            with cond:
                while not (self._results or self._give_back or self._ready_to_leave() or self._drain_unsent()):
                    if not cond.wait(self._heartbeat):
                        break  # nothing to say for a heartbeat interval: say we're alive
                if self._aborted:
                    return
                if self._drain_unsent():
                    self._drain_sent = True
                    message = pb.WorkerMessage(drain=pb.Drain())
                elif self._give_back:
                    message = pb.WorkerMessage(give_back=pb.JobIds(job_ids=self._give_back))
                    self._give_back = []
                elif self._results:
                    message = pb.WorkerMessage(results=pb.WorkerResults(results=self._take_results()))
                elif self._ready_to_leave():
                    return  # deregister: ends the request stream
                else:
                    message = pb.WorkerMessage(heartbeat=pb.Heartbeat())
            yield message

    def _drain_unsent(self) -> bool:
        return self._draining and not self._drain_sent and not self._aborted

    def _ready_to_leave(self) -> bool:
        return self._aborted or (
            self._draining and self._drain_sent and not self._running and not self._jobs and not self._give_back
        )

    def _take_results(self) -> list[pb.WorkerResult]:
        results = self._results
        size = 0
        for index, result in enumerate(results):
            size += len(result.data)
            if size > _BATCH_BYTES and index:
                self._results = results[index:]
                return results[:index]
        self._results = []
        return results

    def _runner(self) -> None:
        cond = self._cond
        handler = self.handler
        while True:
            with cond:
                while not self._jobs:
                    if self._finished or self._aborted or (self._draining and not self._jobs):
                        return
                    cond.wait()
                job = self._jobs.popleft()
                self._running += 1
            try:
                result = pb.WorkerResult(job_id=job.job_id, attempt=job.attempt, ok=True, data=handler(job.data))
            except Exception as exc:
                result = pb.WorkerResult(
                    job_id=job.job_id, attempt=job.attempt, ok=False, error=f"{type(exc).__name__}: {exc}"
                )
            with cond:
                self._running -= 1
                if result.ok:
                    self.jobs_done += 1
                else:
                    self.jobs_failed += 1
                self._results.append(result)
                if len(self._results) == 1 or self._ready_to_leave():
                    cond.notify_all()

    # ---- signals ----

    def _install_signals(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        count = [0]

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            count[0] += 1
            if count[0] == 1:
                _log.info("%s: finishing current jobs (again to exit at once)", signal.Signals(signum).name)
                self.stop()
            else:
                self.abort()

        previous: dict[int, Any] = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore
