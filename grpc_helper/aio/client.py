"""``AsyncRpcClient``: the asyncio twin of ``RpcClient`` (same constructor, retry flow, metadata and errors)."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from grpc_helper._client.core import ClientCore, Metadata, stub_methods, stub_shapes
from grpc_helper._client.retry import CallPlan, closed_error

__all__ = ["AsyncRpcClient"]

_Stub = TypeVar("_Stub")


class _AsyncRequests:
    """Request stream (async or sync iterable) that knows whether gRPC consumed any of it."""

    def __init__(self, requests: AsyncIterable[Any] | Iterable[Any]) -> None:
        self._async = isinstance(requests, AsyncIterable)
        self._it: Any = aiter(requests) if isinstance(requests, AsyncIterable) else iter(requests)
        self.started = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        self.started = True
        if self._async:
            return await anext(self._it)
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class _Channel:
    """A ``grpc.aio`` channel with the stubs built on it, both bound to one event loop."""

    def __init__(self, client: AsyncRpcClient) -> None:
        options = client._options
        if client._credentials is None:
            self.channel = grpc.aio.insecure_channel(client.target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(client.target, client._credentials, options=options)
        self.callables: dict[tuple[str, str], Any] = {}
        #: Set by ``close()``: wakes the calls waiting between two attempts.
        self.closing = asyncio.Event()

    def callable(self, attr: str, name: str, stub_class: type) -> Any:
        key = (attr, name)
        if key not in self.callables:
            for method, callable_, _, _ in stub_methods(stub_class(self.channel)):
                self.callables[(attr, method)] = callable_
        return self.callables[key]


class _AsyncMethod:
    """One method: ``await client.<service>.<method>(request, timeout=None, metadata=None, **grpc_options)``; a
    server stream is an async iterator instead (``async for reply in client.<service>.<method>(request)``)."""

    def __init__(
        self, client: AsyncRpcClient, attr: str, name: str, request_streaming: bool, response_streaming: bool, metadata: Metadata
    ) -> None:
        self._client = client
        self._attr = attr
        self._name = name
        self._request_streaming = request_streaming
        self._response_streaming = response_streaming
        self._metadata = metadata

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Iterable[tuple[str, Any]] | None = None, **options: Any
    ) -> Any:
        md = self._metadata + tuple(metadata or ())
        plan = self._client._plan(timeout)  # the deadline runs from now, retries included
        if self._response_streaming:
            return _AsyncStream(self, request, plan, md, options)
        return self._unary(request, plan, md, options)

    def _callable(self) -> Any:
        return self._client._callable(self._attr, self._name)

    async def _unary(self, request: Any, plan: CallPlan, md: Metadata, options: dict[str, Any]) -> Any:
        client = self._client
        requests = _AsyncRequests(request) if self._request_streaming else None
        while True:
            attempt_timeout = plan.attempt_timeout(client._closed)
            try:
                return await self._callable()(requests or request, timeout=attempt_timeout, metadata=md, **options)
            except grpc.RpcError as error:
                await client._pause(plan.after_failure(error, requests is None or not requests.started, client._closed))
            except asyncio.CancelledError:
                client._raise_if_closed()
                raise


class _AsyncStream:
    """A server stream: ``async for`` it. ``cancel()`` ends the call; ``aclose()`` abandons it.
    ``code()``, ``details()``... are those of the current attempt."""

    def __init__(self, method: _AsyncMethod, request: Any, plan: CallPlan, md: Metadata, options: dict[str, Any]) -> None:
        self._call: Any = None
        self._cancelled = False
        self._items = self._run(method, request, plan, md, options)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return await anext(self._items)

    def cancel(self) -> bool:
        self._cancelled = True
        call = self._call
        return bool(call.cancel()) if call is not None else True

    async def aclose(self) -> None:
        await self._items.aclose()

    def __getattr__(self, name: str) -> Any:
        if self._call is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._call, name)

    async def _run(
        self, method: _AsyncMethod, request: Any, plan: CallPlan, md: Metadata, options: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        client = method._client
        requests = _AsyncRequests(request) if method._request_streaming else None
        while True:
            attempt_timeout = plan.attempt_timeout(client._closed or self._cancelled)
            self._call = call = method._callable()(requests or request, timeout=attempt_timeout, metadata=md, **options)
            received = False
            try:
                async for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as error:
                # Never re-send once an item arrived: the caller would see duplicates.
                replayable = not received and (requests is None or not requests.started)
                await client._pause(plan.after_failure(error, replayable, client._closed))
            except asyncio.CancelledError:
                client._raise_if_closed()
                raise
            finally:
                call.cancel()  # no-op when finished; stops the stream when the caller gives up early


class AsyncRpcClient(ClientCore):
    """asyncio client to one server: ``await client.<name>.<method>(request)`` for each stub of ``stubs``, or the
    same typed as the generated asyncio stub: ``await client.stub(MyServiceStub).<method>(request)``.

    Same parameters and behaviour as ``RpcClient`` (API-version metadata, per-call deadlines including
    retries, retries while the server is unreachable until ``timeout``, ``RpcException`` on failure and on a
    closed client). Server streams are async iterators; request streams may be async or plain iterables.

    The ``grpc.aio`` channel is opened on first use inside the running event loop, one per loop: a client
    made at import time, or used from successive ``asyncio.run()`` calls, just works. ``await close()``
    (or ``async with``) closes it.

    Example::

        async with AsyncRpcClient("127.0.0.1", 50051, {"my": (MyServiceStub, MY_API_CURRENT)}) as client:
            status = await client.my.update(MyConfig(), timeout=5)
            async for event in client.stub(MyServiceStub).watch(Filter()):   # typed: MyServiceAsyncStub
                print(event)
    """

    def __init__(
        self,
        host: str,
        port: int,
        stubs: Mapping[str, tuple[type, int]],
        *,
        timeout: float = 60.0,
        name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(host, port, stubs, timeout, name, options, secure=credentials is not None)
        self._credentials = credentials
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: _Channel | None = None
        # Channels of other loops (closed with the client, or dropped with their loop).
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Channel] = weakref.WeakKeyDictionary()
        self._register()

    def _build(self, attr: str, stub_class: type, metadata: Metadata) -> dict[str, Any]:
        return {n: _AsyncMethod(self, attr, n, rs, ss, metadata) for n, (rs, ss) in stub_shapes(stub_class).items()}

    def stub(self, stub_class: Callable[[grpc.aio.Channel], _Stub], api_version: int | None = None) -> _Stub:
        """The methods of ``stub_class`` typed as its asyncio stub (mypy-protobuf's ``MyServiceAsyncStub``): awaiting
        a call gives the reply, a server stream is an async iterator. ``stub_class`` is one of the client's
        ``stubs``, or any other generated stub with its ``api_version``. See ``RpcClient.stub``."""
        return self._typed(stub_class, api_version)  # type: ignore[return-value]

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds before the next attempt, or until ``close()``."""
        channel = self._channels.get(asyncio.get_running_loop())
        if channel is None:  # closed meanwhile
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.closing.wait(), delay)

    def _raise_if_closed(self) -> None:
        """A call cancelled by ``close()`` (not by its own task's cancellation) raises ``RpcException``."""
        task = asyncio.current_task()
        if self._closed and (task is None or task.cancelling() == 0):
            raise closed_error(self.target) from None

    def _callable(self, attr: str, name: str) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._current is None:
            if self._closed:
                raise closed_error(self.target)
            channel = self._channels.get(loop)
            if channel is None:
                channel = self._channels[loop] = _Channel(self)
            self._loop, self._current = loop, channel
        return self._current.callable(attr, name, self._stub_specs[attr][0])

    async def close(self) -> None:
        """Close the channels (calls in progress are cancelled; later calls raise ``RpcException``). Idempotent."""
        self._closed = True
        current = asyncio.get_running_loop()
        channels, self._current, self._loop = list(self._channels.items()), None, None
        self._channels.clear()
        for loop, channel in channels:
            if loop is current:
                channel.closing.set()
                await channel.channel.close(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(channel.closing.set)
                asyncio.run_coroutine_threadsafe(channel.channel.close(None), loop)
            # else: the loop is gone and its channel with it

    async def __aenter__(self) -> AsyncRpcClient:
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        # Services are set per instance from `stubs` (typed as Any); `stub()` gives them typed.
        raise AttributeError(f"{type(self).__name__} has no service {name!r}")
