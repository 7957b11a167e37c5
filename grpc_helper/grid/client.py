"""``GridClient`` (threads) and ``AsyncGridClient`` (asyncio) over one core of non-I/O logic.

Each client is a session: its jobs' results reach it only, on one server stream opened at the first submit.
A job handle resolves once, even if the server's stream repeated a result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from grpc_helper import ResultCode, RpcClient, RpcException
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.endpoint import split_endpoint

API_VERSION = int(pb.GRID_API_CURRENT)
_SUBMIT_BYTES = 2 * 1024 * 1024  # keep each submit message well under gRPC's default 4 MiB


class JobError(RpcException):
    """A job completed with an error (its handler failed after the retries, worker lost too often, shutdown)."""

    def __init__(self, job_id: int, message: str, rc: int, attempts: int) -> None:
        super().__init__(f"job {job_id} failed: {message}", rc or ResultCode.ERROR)
        self.job_id = job_id
        self.attempts = attempts


Future = concurrent.futures.Future[bytes] | asyncio.Future[bytes]


def _settle(future: Future, result: pb.JobResult) -> None:
    if future.done():
        return  # already resolved (e.g. cancelled locally): a result is delivered once
    if result.state == pb.JOB_DONE:
        future.set_result(result.data)
    elif result.state == pb.JOB_CANCELLED:
        future.cancel()
    else:
        future.set_exception(JobError(result.job_id, result.error, result.rc, result.attempts))


class _ClientCore:
    """Session, request building, and routing of streamed results to futures (no I/O)."""

    def __init__(self, session: str | None, max_batch: int) -> None:
        self.session = session or uuid.uuid4().hex
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._futures: dict[int, Future] = {}
        self._early: dict[int, pb.JobResult] = {}  # results that overtook their submit's response

    def requests(self, service_id: str, version: str | int, payloads: Iterable[bytes]) -> Iterator[pb.SubmitRequest]:
        """Submit requests of at most ``max_batch`` jobs / ~2 MiB each."""
        batch: list[bytes] = []
        size = 0
        for payload in payloads:
            if not isinstance(payload, bytes):
                raise TypeError(f"job payloads are bytes, got {type(payload).__name__}")
            if batch and (len(batch) >= self.max_batch or size + len(payload) > _SUBMIT_BYTES):
                yield self._request(service_id, version, batch)
                batch, size = [], 0
            batch.append(payload)
            size += len(payload)
        if batch:
            yield self._request(service_id, version, batch)

    def _request(self, service_id: str, version: str | int, payloads: list[bytes]) -> pb.SubmitRequest:
        return pb.SubmitRequest(
            session=self.session, service_id=service_id, service_version=str(version), payloads=payloads
        )

    def track(self, job_ids: Sequence[int], futures: Sequence[Future]) -> None:
        with self._lock:
            early = [(f, self._early.pop(i)) for i, f in zip(job_ids, futures, strict=True) if i in self._early]
            self._futures.update((i, f) for i, f in zip(job_ids, futures, strict=True) if not f.done())
        for future, result in early:
            self.untrack(result.job_id)
            _settle(future, result)

    def untrack(self, job_id: int) -> None:
        with self._lock:
            self._futures.pop(job_id, None)

    def pairs(self, results: Iterable[pb.JobResult]) -> list[tuple[Future, pb.JobResult]]:
        """Futures to settle with these results (unknown ids are kept: their submit is still in flight)."""
        out = []
        with self._lock:
            for result in results:
                future = self._futures.pop(result.job_id, None)
                if future is None:
                    self._early[result.job_id] = result
                else:
                    out.append((future, result))
        return out

    def fail_all(self, error: BaseException) -> list[Future]:
        with self._lock:
            futures = list(self._futures.values())
            self._futures.clear()
        for future in futures:
            if not future.done():
                future.set_exception(error)
        return futures

    def pending(self) -> int:
        with self._lock:
            return len(self._futures)


class JobHandle:
    """A submitted job: ``result(timeout)``, ``done()``, ``cancel()``."""

    def __init__(self, client: GridClient, job_id: int, future: concurrent.futures.Future[bytes]) -> None:
        self.job_id = job_id
        self.future = future
        self._client = client

    def result(self, timeout: float | None = None) -> bytes:
        """The job's result; raises ``JobError`` if it failed, ``concurrent.futures.CancelledError`` if
        cancelled, ``TimeoutError`` after ``timeout`` seconds."""
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> bool:
        """Cancel the job on the server; True if it will not complete."""
        return self._client.cancel(self)

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id} {self.future._state}>"


class GridClient:
    """Synchronous grid client; a background thread receives this session's results.

    :param endpoint: ``"host:port"`` of the grid server.
    :param timeout: how long calls retry while the server is unreachable.
    :param max_batch: most jobs per submit call (``map``/``submit_batch`` split bigger inputs).

    Example::

        with GridClient("127.0.0.1:50051") as grid:
            print(list(grid.map("echo", "1", [b"a", b"b"])))
    """

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 60.0,
        name: str = "grid-client",
        session: str | None = None,
        max_batch: int = 1000,
    ) -> None:
        host, port = split_endpoint(endpoint)
        self._core = _ClientCore(session, max_batch)
        self._rpc = RpcClient(
            host,
            port,
            {"grid": (pb_grpc.GridClientServiceStub, API_VERSION)},
            timeout=timeout,
            name=name,
            credentials=credentials,
        )
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._closed = False

    @property
    def session(self) -> str:
        return self._core.session

    def submit(self, service_id: str, version: str | int, data: bytes) -> JobHandle:
        """Submit one job."""
        return self.submit_batch(service_id, version, [data])[0]

    def submit_batch(self, service_id: str, version: str | int, payloads: Iterable[bytes]) -> list[JobHandle]:
        """Submit jobs in as few calls as possible; raises ``RpcException(ERROR_RESOURCE_EXHAUSTED)`` when
        the server is full (jobs of earlier calls of the same batch stay submitted)."""
        self._ensure_reader()
        handles: list[JobHandle] = []
        for request in self._core.requests(service_id, version, payloads):
            response = self._rpc.grid.submit(request)
            futures: list[concurrent.futures.Future[bytes]] = [concurrent.futures.Future() for _ in response.job_ids]
            self._core.track(response.job_ids, futures)  # type: ignore[arg-type]
            handles.extend(JobHandle(self, i, f) for i, f in zip(response.job_ids, futures, strict=True))
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
        Raises the first job's error."""
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
        """Fetch a job's state/result by id (a completed result fetched here is not streamed again)."""
        result: pb.JobResult = self._rpc.grid.get_result(pb.JobRef(job_id=job_id, session=self.session))
        if result.state in (pb.JOB_DONE, pb.JOB_FAILED, pb.JOB_CANCELLED):
            for future, res in self._core.pairs([result]):
                _settle(future, res)
        return result

    def cancel(self, job: JobHandle | int) -> bool:
        """Cancel a job; True if it is cancelled (False: it already completed)."""
        job_id = job.job_id if isinstance(job, JobHandle) else job
        result: pb.JobResult = self._rpc.grid.cancel(pb.JobRef(job_id=job_id, session=self.session))
        if result.state == pb.JOB_CANCELLED:
            for future, res in self._core.pairs([result]):
                _settle(future, res)
            return True
        return False

    def close(self) -> None:
        """Stop receiving results (unfinished handles fail with ERROR_CANCELLED) and close the channel."""
        with self._lock:
            self._closed = True
            reader = self._reader
        self._rpc.close()
        if reader is not None:
            reader.join(timeout=10)
        self._core.fail_all(RpcException("grid client closed", ResultCode.ERROR_CANCELLED))

    def _ensure_reader(self) -> None:
        with self._lock:
            if self._closed:
                raise RpcException("grid client closed", ResultCode.ERROR_STATE_UNEXPECTED)
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="grid-results", daemon=True)
                self._reader.start()

    def _read(self) -> None:
        try:
            for batch in self._rpc.grid.results(pb.ResultsRequest(session=self.session), timeout=None):
                for future, result in self._core.pairs(batch.results):
                    _settle(future, result)
            error = RpcException("the grid server ended the results stream", ResultCode.ERROR_STREAM_SHUTDOWN)
        except RpcException as exc:
            error = exc
        with self._lock:
            closed = self._closed
        if not closed:
            self._core.fail_all(error)

    def __enter__(self) -> GridClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class GridController:
    """Controller role: ``status()``, ``stop_worker(id)``, ``start_worker(command)``, ``shutdown(delay)``."""

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 60.0,
        name: str = "grid-controller",
    ) -> None:
        host, port = split_endpoint(endpoint)
        self._rpc = RpcClient(
            host,
            port,
            {"ctl": (pb_grpc.GridControllerServiceStub, API_VERSION)},
            timeout=timeout,
            name=name,
            credentials=credentials,
        )

    def status(self) -> dict[str, Any]:
        """Workers, queues per service, counters, spawned processes and limits (see doc/grid.md)."""
        return json.loads(self._rpc.ctl.status(pb.StatusRequest()).json)  # type: ignore[no-any-return]

    def stop_worker(self, worker_id: int) -> dict[str, Any]:
        return json.loads(self._rpc.ctl.stop_worker(pb.WorkerRef(worker_id=worker_id)).json)  # type: ignore[no-any-return]

    def start_worker(self, command: str) -> pb.StartWorkerResponse:
        """``"<SERVER_ADDRESS> <CLIENT_DESCRIPTION> <SERVICE_ID> <SERVICE_VERSION>"``: spawn a worker on the server host."""
        return self._rpc.ctl.start_worker(pb.StartWorkerRequest(command=command))  # type: ignore[no-any-return]

    def shutdown(self, delay: float = 0.0) -> pb.ShutdownResponse:
        """Shut the grid down after ``delay`` seconds (0: the server's default); pending jobs fail."""
        return self._rpc.ctl.shutdown_server(pb.ShutdownRequest(delay=delay))  # type: ignore[no-any-return]

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> GridController:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncJobHandle:
    """A job submitted by ``AsyncGridClient``: ``await handle`` or ``await handle.result(timeout)``."""

    def __init__(self, client: AsyncGridClient, job_id: int, future: asyncio.Future[bytes]) -> None:
        self.job_id = job_id
        self.future = future
        self._client = client

    async def result(self, timeout: float | None = None) -> bytes:
        return await asyncio.wait_for(asyncio.shield(self.future), timeout)

    def done(self) -> bool:
        return self.future.done()

    async def cancel(self) -> bool:
        return await self._client.cancel(self)

    def __await__(self) -> Any:
        return self.future.__await__()


class AsyncGridClient:
    """asyncio grid client (``grpc.aio``); create and use it inside the running event loop.

    Example::

        async with AsyncGridClient("127.0.0.1:50051") as grid:
            results = await grid.map("echo", "1", [b"a", b"b"])
    """

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        name: str = "grid-client",
        session: str | None = None,
        max_batch: int = 1000,
    ) -> None:
        self._target = endpoint
        self._credentials = credentials
        self._metadata = (("api-version", str(API_VERSION)), ("client-name", name))
        self._core = _ClientCore(session, max_batch)
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GridClientServiceStub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def session(self) -> str:
        return self._core.session

    def _open(self) -> pb_grpc.GridClientServiceStub:
        if self._closed:
            raise RpcException("grid client closed", ResultCode.ERROR_STATE_UNEXPECTED)
        if self._stub is None:
            # Channels belong to the running loop: created here, on first use, never in __init__.
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target)
            else:
                self._channel = grpc.aio.secure_channel(self._target, self._credentials)
            self._stub = pb_grpc.GridClientServiceStub(self._channel)  # type: ignore[no-untyped-call]
            self._reader = asyncio.get_running_loop().create_task(self._read(self._stub))
        return self._stub

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            raise RpcException.from_grpc_error(error) from None

    async def submit(self, service_id: str, version: str | int, data: bytes) -> AsyncJobHandle:
        return (await self.submit_batch(service_id, version, [data]))[0]

    async def submit_batch(
        self, service_id: str, version: str | int, payloads: Iterable[bytes]
    ) -> list[AsyncJobHandle]:
        stub = self._open()
        loop = asyncio.get_running_loop()
        handles: list[AsyncJobHandle] = []
        for request in self._core.requests(service_id, version, payloads):
            response = await self._call(stub.submit, request)
            futures: list[asyncio.Future[bytes]] = [loop.create_future() for _ in response.job_ids]
            self._core.track(response.job_ids, futures)  # type: ignore[arg-type]
            handles.extend(AsyncJobHandle(self, i, f) for i, f in zip(response.job_ids, futures, strict=True))
        return handles

    async def map(
        self, service_id: str, version: str | int, payloads: Iterable[bytes], *, timeout: float | None = None
    ) -> list[bytes]:
        """All results in input order; raises the first job's error."""
        handles = await self.submit_batch(service_id, version, payloads)
        return list(await asyncio.wait_for(asyncio.gather(*(h.future for h in handles)), timeout))

    @staticmethod
    async def as_completed(
        handles: Iterable[AsyncJobHandle], timeout: float | None = None
    ) -> AsyncIterator[AsyncJobHandle]:
        """Handles as their jobs complete."""
        pending = {h.future: h for h in handles}
        end = None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if end is None else max(0.0, end - time.monotonic())
            done, _ = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise TimeoutError(f"{len(pending)} job(s) not completed in {timeout}s")
            for future in done:
                yield pending.pop(future)

    async def get_result(self, job_id: int) -> pb.JobResult:
        result: pb.JobResult = await self._call(self._open().get_result, pb.JobRef(job_id=job_id, session=self.session))
        if result.state in (pb.JOB_DONE, pb.JOB_FAILED, pb.JOB_CANCELLED):
            for future, res in self._core.pairs([result]):
                _settle(future, res)
        return result

    async def cancel(self, job: AsyncJobHandle | int) -> bool:
        job_id = job.job_id if isinstance(job, AsyncJobHandle) else job
        result: pb.JobResult = await self._call(self._open().cancel, pb.JobRef(job_id=job_id, session=self.session))
        if result.state == pb.JOB_CANCELLED:
            for future, res in self._core.pairs([result]):
                _settle(future, res)
            return True
        return False

    async def _read(self, stub: pb_grpc.GridClientServiceStub) -> None:
        error: RpcException
        try:
            call = stub.results(pb.ResultsRequest(session=self.session), metadata=self._metadata, wait_for_ready=True)
            async for batch in call:  # type: ignore[attr-defined]
                for future, result in self._core.pairs(batch.results):
                    _settle(future, result)
            error = RpcException("the grid server ended the results stream", ResultCode.ERROR_STREAM_SHUTDOWN)
        except grpc.aio.AioRpcError as exc:
            error = RpcException.from_grpc_error(exc)
        except asyncio.CancelledError:
            error = RpcException("grid client closed", ResultCode.ERROR_CANCELLED)
        self._core.fail_all(error)

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close(None)
        self._core.fail_all(RpcException("grid client closed", ResultCode.ERROR_CANCELLED))

    async def __aenter__(self) -> AsyncGridClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
