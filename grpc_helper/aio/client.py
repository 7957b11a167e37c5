"""``AsyncRpcClient``: the asyncio twin of ``RpcClient`` (same constructor, retries, metadata and errors)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from grpc_helper.client import ClientCore, _Service, stub_methods


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
        self.callables = {
            (attr, name): callable_
            for attr, (stub_class, _) in client._stub_specs.items()
            for name, callable_, _, _ in stub_methods(stub_class(self.channel))
        }


class _AsyncMethod:
    """One method: ``await client.<service>.<method>(request, timeout=None, metadata=())``; a server stream is an
    async iterator instead (``async for reply in client.<service>.<method>(request)``)."""

    def __init__(
        self,
        client: AsyncRpcClient,
        key: tuple[str, str],
        request_streaming: bool,
        response_streaming: bool,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self._client = client
        self._key = key
        self._request_streaming = request_streaming
        self._response_streaming = response_streaming
        self._metadata = metadata

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Iterable[tuple[str, str]] = ()
    ) -> Any:
        md = self._metadata + tuple(metadata) if metadata else self._metadata
        if self._response_streaming:
            return self._stream(request, timeout, md)
        return self._unary(request, timeout, md)

    async def _unary(self, request: Any, timeout: float | None, md: tuple[tuple[str, str], ...]) -> Any:
        client = self._client
        callable_ = client._callable(self._key)
        requests = _AsyncRequests(request) if self._request_streaming else None
        for delay in client._attempts():
            try:
                return await callable_(requests or request, timeout=timeout, metadata=md)
            except grpc.RpcError as error:
                await client._pause(error, delay, requests is None or not requests.started)
        raise AssertionError("unreachable")  # _attempts() ends by raising

    async def _stream(self, request: Any, timeout: float | None, md: tuple[tuple[str, str], ...]) -> AsyncIterator[Any]:
        client = self._client
        callable_ = client._callable(self._key)
        requests = _AsyncRequests(request) if self._request_streaming else None
        for delay in client._attempts():
            received = False
            call = callable_(requests or request, timeout=timeout, metadata=md)
            try:
                async for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as error:
                # Never re-send once an item arrived: the caller would see duplicates.
                await client._pause(error, delay, not received and (requests is None or not requests.started))
            finally:
                call.cancel()  # no-op when finished; stops the stream when the caller gives up early


class AsyncRpcClient(ClientCore):
    """asyncio client to one server: ``await client.<name>.<method>(request)`` for each stub of ``stubs``.

    Same parameters and behaviour as ``RpcClient`` (API-version metadata, retries while the server is
    unreachable until ``timeout``, ``RpcException`` on failure). Server streams are async iterators; request
    streams may be async or plain iterables.

    The ``grpc.aio`` channel is opened on first use inside the running event loop, one per loop: a client
    made at import time, or used from successive ``asyncio.run()`` calls, just works. ``await close()``
    (or ``async with``) closes it.

    Example::

        async with AsyncRpcClient("127.0.0.1", 50051, {"my": (MyServiceStub, MY_API_CURRENT)}) as client:
            status = await client.my.update(MyConfig(), timeout=5)
            async for event in client.my.watch(Filter()):
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
        super().__init__(host, port, stubs, timeout, name, options)
        self._credentials = credentials
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: _Channel | None = None
        # Channels of other loops (closed with the client, or dropped with their loop).
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Channel] = weakref.WeakKeyDictionary()
        for attr, (stub_class, metadata) in self._stub_specs.items():
            shapes = vars(stub_class(_ShapeRecorder()))
            methods = {n: _AsyncMethod(self, (attr, n), rs, ss, metadata) for n, (rs, ss) in shapes.items()}
            setattr(self, attr, _Service(attr, methods))

    def _callable(self, key: tuple[str, str]) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._current is None:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} to {self.target} is closed")
            channel = self._channels.get(loop)
            if channel is None:
                channel = self._channels[loop] = _Channel(self)
            self._loop, self._current = loop, channel
        return self._current.callables[key]

    async def _pause(self, error: grpc.RpcError, delay: float, replayable: bool) -> None:
        """After a failed attempt: sleep and return to retry, or raise the ``RpcException``."""
        await asyncio.sleep(self._retry_delay(error, delay, replayable, self._closed))

    async def close(self) -> None:
        """Close the channels (calls in progress are cancelled). Idempotent."""
        self._closed = True
        current = asyncio.get_running_loop()
        channels, self._current, self._loop = list(self._channels.items()), None, None
        self._channels.clear()
        for loop, channel in channels:
            if loop is current:
                await channel.channel.close(None)
            elif not loop.is_closed():
                asyncio.run_coroutine_threadsafe(channel.channel.close(None), loop)
            # else: the loop is gone and its channel with it

    async def __aenter__(self) -> AsyncRpcClient:
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        await self.close()


class _ShapeRecorder:
    """Stands in for a channel to learn a stub's methods and their shapes without connecting."""

    def unary_unary(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return False, False

    def unary_stream(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return False, True

    def stream_unary(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return True, False

    def stream_stream(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return True, True
