"""``GridClient``: the synchronous face of a grid session (a background thread receives its results)."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc

from grpc_helper import ResultCode, RpcClient, RpcException
from grpc_helper.grid._failover import SyncClients
from grpc_helper.grid._session import (
    API_VERSION,
    RECONNECTABLE,
    Backoff,
    Endpoints,
    JobError,
    Outage,
    SessionCore,
    unreachable,
)
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.config import CHANNEL_OPTIONS

__all__ = ["GridClient", "JobError", "JobHandle"]

_log = logging.getLogger("grpc_helper.grid.client")


class JobHandle:
    """A submitted job: ``result(timeout)``, ``done()``, ``cancel()``."""

    def __init__(self, client: GridClient, job_id: int, future: concurrent.futures.Future[bytes]) -> None:
        self.job_id = job_id
        self.future = future
        self._client = client

    def result(self, timeout: float | None = None) -> bytes:
        """The job's result; raises ``JobError`` if it failed, ``concurrent.futures.CancelledError`` if
        cancelled, ``TimeoutError`` after ``timeout`` seconds. Without a timeout it waits as long as the job
        runs (jobs may legitimately run for hours): it still returns or raises if the server restarts (the job
        is then reported unknown) or stays unreachable for the client's ``timeout``."""
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> bool:
        """Cancel the job on the server; True if it will not complete."""
        return self._client.cancel(self)

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id} {self.future._state}>"


class GridClient:
    """Synchronous grid client: one session, whose results a background thread receives and acknowledges.

    :param endpoint: ``"host:port"`` of the grid server, or several grid servers of one grid to fail over
        between: ``"a:50051,b:50051"`` or ``["a:50051", "b:50051"]`` (used in order, see below).
    :param credentials: ``grpc.ChannelCredentials`` for a TLS server.
    :param timeout: deadline of each call, and how long the servers may stay unreachable (calls retry, the
        results stream reopens with back-off) before calls fail and pending jobs fail with ``ERROR_RPC``.
    :param session: reuse a session id (default: a new random one).
    :param max_batch: most jobs per submit call (``map``/``submit_batch`` split bigger inputs).

    Results are acknowledged once received, so the server sends each at least once and each handle resolves
    once. ``close()`` (or leaving the ``with`` block) cancels the session's jobs not completed.

    **Several endpoints.** Every call goes to one server, the first of the list at start. When it is
    unreachable (a call's connection fails or breaks) or the results stream breaks, the client moves to the
    next endpoint (round robin, with the stream's back-off) and carries on: it reopens the results stream
    there with its session id and the ids of the jobs still waiting, so a server sharing the grid's backend
    delivers their results, and one that does not know them reports each as failed with
    ``ERROR_ITEM_UNKNOWN`` (resubmit). Calls keep going round the list until ``timeout`` has passed.
    A **submit** is sent to another endpoint only when it provably never reached a server (its connection
    could not be made). If the connection broke after the request left, the deadline passed, or the server
    answered that its grid is shut down, its answer is lost: ``submit``/``submit_batch`` raise
    ``RpcException`` (``ERROR_RPC``, "... not re-sent to another endpoint: its jobs may or may not have been
    accepted"; ``ERROR_DEADLINE``; ``ERROR_STREAM_SHUTDOWN``) and the client does not re-send it, since a
    server that stored the jobs would run them twice; later calls go to the next endpoint (not after a
    deadline). Those jobs have no handle: if they run, their results are acknowledged and dropped. Submit
    again if running a job twice is acceptable. With one endpoint, the core client's retry rules apply
    unchanged (transport failures are re-sent to that server until ``timeout``).

    Example::

        with GridClient("127.0.0.1:50051") as grid:
            print(list(grid.map("echo", "1", [b"a", b"b"])))
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 60.0,
        name: str = "grid-client",
        session: str | None = None,
        max_batch: int = 1000,
    ) -> None:
        self._endpoints = Endpoints(endpoint)
        self._core = SessionCore(session, max_batch)
        self._timeout = timeout

        def make(host: str, port: int, budget: float) -> RpcClient:
            return RpcClient(
                host,
                port,
                {"grid": (pb_grpc.GridClientServiceStub, API_VERSION)},
                timeout=budget,
                name=name,
                credentials=credentials,
                options=CHANNEL_OPTIONS,
            )

        self._rpc = SyncClients(self._endpoints, make, timeout)
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stream: Any = None  # the results stream open now (cancelled when a call moves to another endpoint)
        self._closing = threading.Event()
        self._submitted = threading.Event()
        self._endpoints.on_move(self._moved)

    @property
    def session(self) -> str:
        return self._core.session

    @property
    def endpoint(self) -> str:
        """The grid server in use, ``host:port``."""
        return self._endpoints.target

    def submit(self, service_id: str, version: str | int, data: bytes) -> JobHandle:
        """Submit one job."""
        return self.submit_batch(service_id, version, [data])[0]

    def submit_batch(self, service_id: str, version: str | int, payloads: Iterable[bytes]) -> list[JobHandle]:
        """Submit jobs in as few calls as possible; raises ``RpcException(ERROR_RESOURCE_EXHAUSTED)`` past a
        quota (jobs of earlier calls of the same batch stay submitted). With several endpoints, a call whose
        answer was lost raises and is not re-sent (see the class)."""
        self._ensure_reader()
        handles: list[JobHandle] = []
        for request in self._core.requests(service_id, version, payloads):
            self._core.submitting()
            ids: list[int] = []
            futures: list[concurrent.futures.Future[bytes]] = []
            try:
                ids = list(self._rpc.call("grid", "submit", request, once=True).job_ids)
                futures = [concurrent.futures.Future() for _ in ids]
            finally:
                self._core.submitted(ids, futures)  # type: ignore[arg-type]
            self._submitted.set()
            handles.extend(JobHandle(self, i, f) for i, f in zip(ids, futures, strict=True))
        return handles

    def map(
        self,
        service_id: str,
        version: str | int,
        payloads: Iterable[bytes],
        *,
        timeout: float | None = None,
        window: int = 10_000,
    ) -> Iterator[bytes]:
        """Results in input order (like ``Executor.map``); at most ``window`` jobs are outstanding at once.
        Raises the first job's error; ``timeout`` bounds the whole iteration."""
        end = None if timeout is None else time.monotonic() + timeout
        outstanding: list[JobHandle] = []
        head = 0
        it = iter(payloads)
        while True:
            chunk = [p for _, p in zip(range(self._core.max_batch), it, strict=False)]
            while head < len(outstanding) and (len(outstanding) - head + len(chunk) > window or not chunk):
                yield outstanding[head].result(None if end is None else max(0.0, end - time.monotonic()))
                head += 1
            if not chunk:
                return
            outstanding = outstanding[head:] + self.submit_batch(service_id, version, chunk)
            head = 0

    @staticmethod
    def as_completed(handles: Iterable[JobHandle], timeout: float | None = None) -> Iterator[JobHandle]:
        """Handles as their jobs complete."""
        by_future = {h.future: h for h in handles}
        for future in concurrent.futures.as_completed(by_future, timeout):
            yield by_future[future]

    def get_result(self, job_id: int) -> pb.JobResult:
        """Fetch a job's state/result by id (a completed result also resolves its handle)."""
        result: pb.JobResult = self._rpc.call("grid", "get_result", pb.JobRef(job_id=job_id, session=self.session))
        self._core.resolve(result)
        return result

    def cancel(self, job: JobHandle | int) -> bool:
        """Cancel a job; True if it is cancelled (False: it already completed)."""
        job_id = job.job_id if isinstance(job, JobHandle) else job
        result: pb.JobResult = self._rpc.call("grid", "cancel", pb.JobRef(job_id=job_id, session=self.session))
        self._core.resolve(result)
        return bool(result.state == pb.JOB_CANCELLED)

    def close(self) -> None:
        """End the session: jobs not completed are cancelled on the server (best effort), unfinished handles
        fail with ``ERROR_CANCELLED``, the channel is closed."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            self._submitted.set()
            reader = self._reader
        if reader is not None:
            try:
                self._rpc.call("grid", "close_session", pb.SessionRef(session=self.session), timeout=min(self._timeout, 2.0))
            except RpcException as exc:
                _log.debug("close_session: %s", exc)
        self._rpc.close()
        if reader is not None:
            reader.join(timeout=10)
        self._core.fail_all(RpcException("grid client closed", ResultCode.ERROR_CANCELLED))

    def _ensure_reader(self) -> None:
        with self._lock:
            if self._closing.is_set():
                raise RpcException("grid client closed", ResultCode.ERROR_STATE_UNEXPECTED)
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="grid-results", daemon=True)
                self._reader.start()

    def _moved(self) -> None:
        """A call moved to another endpoint: the results stream follows it."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def _read(self) -> None:
        """Receive results; reopen the stream with back-off when it breaks (server restart, network), on the
        next endpoint when there are several."""
        backoff = Backoff()
        outage = Outage(self._timeout)
        core = self._core
        while not self._closing.is_set():
            generation, index = self._endpoints.current()
            try:
                request = pb.ResultsRequest(session=self.session, waiting=core.waiting())
                stream = self._rpc.client(index).grid.results(request, timeout=None)
                with self._lock:
                    self._stream = stream
                if self._endpoints.current()[0] != generation:
                    stream.cancel()  # a call moved meanwhile
                for batch in stream:
                    outage.ok()
                    backoff.reset()
                    ids = core.receive(batch.results)
                    if ids:
                        self._ack(ids)
                error = RpcException("the grid server ended the results stream", ResultCode.ERROR_STREAM_SHUTDOWN)
            except RpcException as exc:
                error = exc
            finally:
                with self._lock:
                    self._stream = None
            if self._closing.is_set():
                return
            _log.info("results stream of session %s on %s broke: %s", self.session, self._endpoints.targets[index], error)
            if error.rc not in RECONNECTABLE:
                core.fail_all(error)  # an answer (permission, certificate...): reported at once
            elif outage.exceeded():
                core.fail_all(unreachable(str(self._endpoints), self._timeout, error))
            if error.rc in RECONNECTABLE:
                self._endpoints.failed(generation)  # several endpoints: go on with the next one
            self._submitted.clear()
            if not core.pending():
                self._submitted.wait()  # nothing to wait for: reconnect when there is
                outage.ok()
            else:
                self._closing.wait(backoff.next())

    def _ack(self, ids: list[int]) -> None:
        try:
            self._rpc.call("grid", "ack", pb.AckRequest(session=self.session, job_ids=ids))
        except RpcException as exc:  # the stream breaks too: unacknowledged results come again
            _log.debug("ack: %s", exc)

    def __enter__(self) -> GridClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
