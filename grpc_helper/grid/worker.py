"""``GridWorker``: runs a handler for the jobs of one (service_id, service_version), over one bidi stream.

Threads: the caller's thread reads the server's messages, ``concurrency`` runner threads call the handler,
and gRPC pulls outgoing messages (results, starts, hand-backs, heartbeats) from a generator. Every wait is on
one condition. A broken stream (server restart, network) is reopened with back-off, on the next endpoint
when the worker was given several; the jobs of the old stream are dropped (the server re-queued them).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import grpc

from grpc_helper import ResultCode, RpcClient, RpcException
from grpc_helper.grid._prefetch import Prefetch
from grpc_helper.grid._session import RECONNECTABLE, Backoff, Endpoints
from grpc_helper.grid._signals import install_stop_signals
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.config import CHANNEL_OPTIONS

_log = logging.getLogger("grpc_helper.grid.worker")

#: Exit code of a worker stopped by a second Ctrl+C / SIGTERM (its jobs go back to the queue).
EXIT_ABORTED = 130

_BATCH_BYTES = 2 * 1024 * 1024
class GridWorker:
    """Serve jobs of ``(service_id, version)`` with ``handler(bytes) -> bytes``.

    :param endpoint: grid server address, ``"host:port"``, or several servers of one grid (``"a:1,b:2"`` or a
        list): the worker registers with the first and, when its stream breaks or the server is unreachable,
        registers again with the next one (round robin, with the back-off below).
    :param concurrency: jobs run at the same time (threads: use several worker processes for CPU-bound work).
    :param prefetch: extra jobs the server sends ahead of time; default: adapted to the handler's speed (many
        for tiny jobs, a few for slow ones, so that no worker hoards work others could do).
    :param credentials: ``grpc.ChannelCredentials`` for a TLS server.
    :param connect_timeout: how long ``run()`` waits for an unreachable server before its first registration.

    ``run()`` blocks until the worker is stopped: by ``stop()``, by the controller's ``stop_worker`` or the
    server's shutdown, or by Ctrl+C/SIGTERM (when run in the main thread): running jobs finish, unstarted ones
    are handed back, the worker deregisters and ``run()`` returns 0. A second signal (or ``abort()``) leaves at
    once: the server re-queues the jobs, ``run()`` returns ``EXIT_ABORTED``. Once registered, a lost stream
    (server restart, missed heartbeats, network) is reopened with back-off until the worker is stopped, on
    the next endpoint when there are several: the worker registers there anew (a new ``worker_id``); results
    of jobs from the lost stream are dropped (that server re-queues them, or lost them with itself).

    Example::

        GridWorker("127.0.0.1:50051", "upper", "1", bytes.upper, concurrency=4).run()
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
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
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.endpoint = endpoint
        self._endpoints = Endpoints(endpoint)
        self.service_id = service_id
        self.version = str(version)
        self.handler = handler
        self.concurrency = concurrency
        self._prefetch = Prefetch(prefetch, concurrency)
        self.description = description or f"{socket.gethostname()}:{os.getpid()}"
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        #: Set once the server accepted the (first) registration (``worker_id`` is known then).
        self.registered = threading.Event()
        self.worker_id = 0
        self.jobs_done = 0
        self.jobs_failed = 0
        #: Streams opened again after one was lost.
        self.reconnections = 0
        self._cond = threading.Condition()
        self._gen = 0  # stream generation: jobs and results of an older stream are dropped
        self._jobs: deque[pb.Job] = deque()
        self._results: list[pb.WorkerResult] = []
        self._started: list[int] = []
        self._give_back: list[int] = []
        self._tune = 0
        self._confirm: dict[int, int] = {}  # job id -> number of the message announcing its start (0: not yet)
        self._built = 0  # messages built by the request generator (this stream)
        self._flushed = 0  # messages whose send completed (this stream)
        self._running = 0
        self._draining = False
        self._drain_sent = False
        self._aborted = False
        self._finished = False
        self._heartbeat = 2.0
        self._client: RpcClient | None = None

    @property
    def prefetch(self) -> int:
        return self._prefetch.value

    @property
    def server(self) -> str:
        """The grid server in use (or tried next), ``host:port``."""
        return self._endpoints.target

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

        Raises ``RpcException`` when the server cannot be reached (or refuses the worker) before the first
        registration.
        """
        restore = install_stop_signals(self.stop, self.abort) if install_signals else None
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

    def _connect(self, clients: dict[int, RpcClient]) -> tuple[int, RpcClient]:
        """The endpoint in use (its generation) and its client, made on first use."""
        generation, index = self._endpoints.current()
        client = clients.get(index)
        if client is None:
            host, port = self._endpoints.endpoints[index]
            client = clients[index] = RpcClient(
                host,
                port,
                {"grid_worker": (pb_grpc.GridWorkerServiceStub, pb.GRID_API_CURRENT)},
                timeout=self.connect_timeout,
                name=self.description,
                credentials=self.credentials,
                options=CHANNEL_OPTIONS,
            )
        with self._cond:
            self._client = client
            aborted = self._aborted
        if aborted:
            client.close()  # abort() closed the previous one
        return generation, client

    def _serve(self) -> int:
        clients: dict[int, RpcClient] = {}
        backoff = Backoff(0.1, 5.0)
        deadline = time.monotonic() + self.connect_timeout
        try:
            while True:
                generation, client = self._connect(clients)
                gen = self._new_stream()
                error: RpcException | None = None
                try:
                    for message in client.grid_worker.work(self._requests(gen), timeout=None):
                        if self._on_message(message):
                            backoff.reset()
                except RpcException as exc:
                    error = exc
                with self._cond:
                    if self._aborted:
                        return EXIT_ABORTED
                    if self._draining:
                        _log.info("worker %d stopped (%d jobs done)", self.worker_id, self.jobs_done)
                        return 0
                if error is None:
                    error = RpcException("the grid server closed the worker stream", ResultCode.ERROR_STREAM_SHUTDOWN)
                if not self.registered.is_set() and (error.rc not in RECONNECTABLE or time.monotonic() >= deadline):
                    raise error
                lost = self._endpoints.target
                self._endpoints.failed(generation)  # several endpoints: register with the next one
                delay = backoff.next()
                _log.warning("worker stream to %s lost (%s): reconnecting to %s in %.1fs", lost, error, self.server, delay)
                with self._cond:
                    self._cond.wait_for(lambda: self._draining, delay)
                    if self._aborted:
                        return EXIT_ABORTED
                    if self._draining:
                        return 0
                self.reconnections += 1
        finally:
            for client in clients.values():
                client.close()

    def _new_stream(self) -> int:
        with self._cond:
            self._gen += 1
            self._jobs.clear()
            self._results.clear()
            self._started.clear()
            self._give_back.clear()
            self._tune = 0
            self._confirm.clear()
            self._built = self._flushed = 0
            self._drain_sent = False
            self._cond.notify_all()
            return self._gen

    def _on_message(self, message: pb.ServerMessage) -> bool:
        """Handle one server message; True for a registration."""
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
                self._cond.notify_all()  # the sender's heartbeat wait follows the server's interval
            self.registered.set()
            _log.info("worker %d registered for %s/%s", self.worker_id, self.service_id, self.version)
            return True
        elif kind == "command" and message.command.command == pb.WORKER_COMMAND_STOP:
            _log.info("worker %d: stop requested by the server", self.worker_id)
            self.stop()
        return False

    def _requests(self, gen: int) -> Iterator[pb.WorkerMessage]:
        yield pb.WorkerMessage(
            register=pb.WorkerRegister(
                description=self.description,
                service_id=self.service_id,
                service_version=self.version,
                concurrency=self.concurrency,
                prefetch=self._prefetch.value,
                pid=os.getpid(),
                host=socket.gethostname(),
            )
        )
        cond = self._cond
        last = time.monotonic()
        while True:
            with cond:
                while not (
                    self._results or self._started or self._give_back or self._tune
                    or self._ready_to_leave() or self._drain_unsent() or gen != self._gen
                ):
                    left = last + self._heartbeat - time.monotonic()
                    if left <= 0:
                        break  # nothing to say for a heartbeat interval: say we're alive
                    cond.wait(left)
                if self._aborted or gen != self._gen:
                    return
                if self._drain_unsent():
                    self._drain_sent = True
                    message = pb.WorkerMessage(drain=pb.Drain())
                elif self._give_back:
                    message = pb.WorkerMessage(give_back=pb.JobIds(job_ids=self._give_back))
                    self._give_back = []
                elif self._results or self._started:
                    message = pb.WorkerMessage(results=self._take_results())
                elif self._tune:
                    message = pb.WorkerMessage(tune=pb.Tune(prefetch=self._tune))
                    self._tune = 0
                elif self._ready_to_leave():
                    return  # deregister: ends the request stream
                else:
                    message = pb.WorkerMessage(heartbeat=pb.Heartbeat())
                self._built += 1
                number = self._built
            yield message
            last = time.monotonic()
            with cond:  # gRPC asks for the next message once this one is sent
                if gen == self._gen:
                    self._flushed = number
                    cond.notify_all()

    def _confirmed(self, job_id: int, gen: int) -> bool:
        """The start of ``job_id`` was sent (or waiting for it is moot)."""
        return 0 < self._confirm.get(job_id, 0) <= self._flushed or gen != self._gen or self._aborted

    def _drain_unsent(self) -> bool:
        return self._draining and not self._drain_sent and not self._aborted

    def _ready_to_leave(self) -> bool:
        return self._aborted or (
            self._draining and self._drain_sent and not self._running and not self._jobs and not self._give_back
            and not self._results
        )

    def _take_results(self) -> pb.WorkerResults:
        results = self._results
        size = 0
        for index, result in enumerate(results):
            size += len(result.data)
            if size > _BATCH_BYTES and index:
                self._results = results[index:]
                results = results[:index]
                break
        else:
            self._results = []
        done = {r.job_id for r in results}
        started = [i for i in self._started if i not in done]  # a result proves its start
        self._started = []
        if self._confirm:
            for job_id in started:
                if job_id in self._confirm:
                    self._confirm[job_id] = self._built + 1  # the number this message gets
        return pb.WorkerResults(results=results, started=started)

    def _runner(self) -> None:
        cond = self._cond
        handler = self.handler
        while True:
            with cond:
                while not self._jobs:
                    if self._finished or self._aborted or self._draining:
                        return
                    cond.wait()
                job = self._jobs.popleft()
                gen = self._gen
                self._running += 1
                self._started.append(job.job_id)
                if len(self._started) == 1:
                    cond.notify_all()
                if job.confirm_start:
                    # This job was running when a worker was lost: make sure the server knows it starts here
                    # before running it (a job that kills its worker is then counted exactly).
                    job_id = job.job_id
                    self._confirm[job_id] = 0
                    cond.wait_for(functools.partial(self._confirmed, job_id, gen))
                    self._confirm.pop(job_id, None)
                    if gen != self._gen or self._aborted:
                        self._running -= 1
                        continue
            begin = time.perf_counter()
            try:
                result = pb.WorkerResult(job_id=job.job_id, lease=job.lease, ok=True, data=handler(job.data))
            except Exception as exc:
                result = pb.WorkerResult(
                    job_id=job.job_id, lease=job.lease, ok=False, error=f"{type(exc).__name__}: {exc}"[:4096]
                )
            tune = self._prefetch.record(time.perf_counter() - begin)
            with cond:
                self._running -= 1
                if result.ok:
                    self.jobs_done += 1
                else:
                    self.jobs_failed += 1
                if gen == self._gen:
                    self._results.append(result)
                    if tune is not None:
                        self._tune = tune
                if len(self._results) == 1 or self._ready_to_leave() or tune is not None:
                    cond.notify_all()
