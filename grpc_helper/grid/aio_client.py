"""``AsyncGridClient``: the asyncio face of a grid session (a task receives its results)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any, cast

import grpc

from grpc_helper import AsyncRpcClient, ResultCode, RpcException
from grpc_helper.grid._failover import AsyncClients
from grpc_helper.grid._session import API_VERSION, RECONNECTABLE, Backoff, Endpoints, Outage, SessionCore, unreachable
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.config import CHANNEL_OPTIONS

_log = logging.getLogger("grpc_helper.grid.client")


class AsyncJobHandle:
    """A job submitted by ``AsyncGridClient``: ``await handle`` or ``await handle.result(timeout)``."""

    def __init__(self, client: AsyncGridClient, job_id: int, future: asyncio.Future[bytes]) -> None:
        self.job_id = job_id
        self.future = future
        self._client = client

    async def result(self, timeout: float | None = None) -> bytes:
        """Like ``JobHandle.result``; raises ``TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(asyncio.shield(self.future), timeout)

    def done(self) -> bool:
        return self.future.done()

    async def cancel(self) -> bool:
        return await self._client.cancel(self)

    def __await__(self) -> Any:
        return self.future.__await__()


class AsyncGridClient:
    """asyncio grid client: the same session core, parameters and guarantees as ``GridClient`` (several
    endpoints included: the same failover, and a submit whose answer was lost raises, not re-sent).

    Create and use it inside the running event loop (the channel is opened on first use).

    Example::

        async with AsyncGridClient("127.0.0.1:50051") as grid:
            results = await grid.map("echo", "1", [b"a", b"b"])
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

        def make(host: str, port: int, budget: float) -> AsyncRpcClient:
            return AsyncRpcClient(
                host,
                port,
                {"grid": (pb_grpc.GridClientServiceStub, API_VERSION)},
                timeout=budget,
                name=name,
                credentials=credentials,
                options=CHANNEL_OPTIONS,
            )

        self._rpc = AsyncClients(self._endpoints, make, timeout)
        self._stream: Any = None  # the results stream open now (cancelled when a call moves to another endpoint)
        self._endpoints.on_move(self._moved)
        self._reader: asyncio.Task[None] | None = None
        self._submitted: asyncio.Event | None = None
        self._closed = False

    @property
    def session(self) -> str:
        return self._core.session

    @property
    def endpoint(self) -> str:
        """The grid server in use, ``host:port``."""
        return self._endpoints.target

    def _ensure_reader(self) -> asyncio.Event:
        if self._closed:
            raise RpcException("grid client closed", ResultCode.ERROR_STATE_UNEXPECTED)
        if self._reader is None or self._submitted is None:
            self._submitted = asyncio.Event()
            self._reader = asyncio.get_running_loop().create_task(self._read(self._submitted))
        return self._submitted

    async def submit(self, service_id: str, version: str | int, data: bytes) -> AsyncJobHandle:
        return (await self.submit_batch(service_id, version, [data]))[0]

    async def submit_batch(
        self, service_id: str, version: str | int, payloads: Iterable[bytes]
    ) -> list[AsyncJobHandle]:
        submitted = self._ensure_reader()
        loop = asyncio.get_running_loop()
        handles: list[AsyncJobHandle] = []
        for request in self._core.requests(service_id, version, payloads):
            self._core.submitting()
            ids: list[int] = []
            futures: list[asyncio.Future[bytes]] = []
            try:
                ids = list((await self._rpc.call("grid", "submit", request, once=True)).job_ids)
                futures = [loop.create_future() for _ in ids]
            finally:
                self._core.submitted(ids, futures)  # type: ignore[arg-type]
            submitted.set()
            handles.extend(AsyncJobHandle(self, i, f) for i, f in zip(ids, futures, strict=True))
        return handles

    async def map(
        self, service_id: str, version: str | int, payloads: Iterable[bytes], *, timeout: float | None = None
    ) -> list[bytes]:
        """All results in input order; raises the first job's error; ``timeout`` bounds the whole call."""
        async with asyncio.timeout(timeout):
            handles = await self.submit_batch(service_id, version, payloads)
            return list(await asyncio.gather(*(h.future for h in handles)))

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
        result: pb.JobResult = await self._rpc.call("grid", "get_result", pb.JobRef(job_id=job_id, session=self.session))
        self._core.resolve(result)
        return result

    async def cancel(self, job: AsyncJobHandle | int) -> bool:
        job_id = job.job_id if isinstance(job, AsyncJobHandle) else job
        result: pb.JobResult = await self._rpc.call("grid", "cancel", pb.JobRef(job_id=job_id, session=self.session))
        self._core.resolve(result)
        return bool(result.state == pb.JOB_CANCELLED)

    def _moved(self) -> None:
        """A call moved to another endpoint: the results stream follows it."""
        stream = self._stream
        if stream is not None:
            stream.cancel()

    async def _read(self, submitted: asyncio.Event) -> None:
        backoff = Backoff()
        outage = Outage(self._timeout)
        core = self._core
        while not self._closed:
            generation, index = self._endpoints.current()
            try:
                request = pb.ResultsRequest(session=self.session, waiting=core.waiting())
                self._stream = stream = cast(Any, self._rpc.client(index)).grid.results(request, timeout=None)
                async for batch in stream:
                    outage.ok()
                    backoff.reset()
                    ids = core.receive(batch.results)
                    if ids:
                        await self._ack(ids)
                error = RpcException("the grid server ended the results stream", ResultCode.ERROR_STREAM_SHUTDOWN)
            except RpcException as exc:
                error = exc
            finally:
                self._stream = None
            if self._closed:
                return
            _log.info("results stream of session %s on %s broke: %s", self.session, self._endpoints.targets[index], error)
            if error.rc not in RECONNECTABLE:
                core.fail_all(error)
            elif outage.exceeded():
                core.fail_all(unreachable(str(self._endpoints), self._timeout, error))
            if error.rc in RECONNECTABLE:
                self._endpoints.failed(generation)  # several endpoints: go on with the next one
            submitted.clear()
            if not core.pending():
                await submitted.wait()
                outage.ok()
            else:
                await asyncio.sleep(backoff.next())

    async def _ack(self, ids: list[int]) -> None:
        try:
            await self._rpc.call("grid", "ack", pb.AckRequest(session=self.session, job_ids=ids))
        except RpcException as exc:
            _log.debug("ack: %s", exc)

    async def close(self) -> None:
        """Like ``GridClient.close``."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            try:
                await self._rpc.call(
                    "grid", "close_session", pb.SessionRef(session=self.session), timeout=min(self._timeout, 2.0)
                )
            except RpcException as exc:
                _log.debug("close_session: %s", exc)
        await self._rpc.close()
        self._core.fail_all(RpcException("grid client closed", ResultCode.ERROR_CANCELLED))

    async def __aenter__(self) -> AsyncGridClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
