"""``RpcClient``: calls to a server's services with API versions, deadlines, retries and ``RpcException``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc

from grpc_helper._client.core import ClientCore, Metadata, stub_methods
from grpc_helper._client.retry import CallPlan

__all__ = ["RpcClient"]

_Stub = TypeVar("_Stub")


class _Requests:
    """Wraps a request iterator to know whether gRPC consumed any of it (then a retry would lose items)."""

    def __init__(self, requests: Iterable[Any]) -> None:
        self._it = iter(requests)
        self.started = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        self.started = True
        return next(self._it)


class _Method:
    """One method: ``client.<service>.<method>(request, timeout=None, metadata=None, **grpc_options)``."""

    def __init__(
        self, client: RpcClient, callable_: Any, request_streaming: bool, response_streaming: bool, metadata: Metadata
    ) -> None:
        self._client = client
        self._callable = callable_
        self._request_streaming = request_streaming
        self._response_streaming = response_streaming
        self._metadata = metadata

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Iterable[tuple[str, Any]] | None = None, **options: Any
    ) -> Any:
        md = self._metadata + tuple(metadata or ())
        plan = self._client._plan(timeout)  # the deadline runs from now, retries included
        if self._response_streaming:
            return _Stream(self, request, plan, md, options)
        requests = _Requests(request) if self._request_streaming else None
        closed = self._client._closed
        while True:
            attempt_timeout = plan.attempt_timeout(closed.is_set())
            try:
                return self._callable(requests or request, timeout=attempt_timeout, metadata=md, **options)
            except grpc.RpcError as error:
                closed.wait(plan.after_failure(error, requests is None or not requests.started, closed.is_set()))
            except ValueError:  # grpc refuses calls on a closed channel
                if not closed.is_set():
                    raise
                plan.attempt_timeout(True)


class _Stream:
    """A server stream: iterate it for the replies. ``cancel()`` (any thread) ends the call; ``close()`` (or
    dropping the iterator) abandons it. ``code()``, ``details()``... are those of the current attempt."""

    def __init__(self, method: _Method, request: Any, plan: CallPlan, md: Metadata, options: dict[str, Any]) -> None:
        self._call: Any = None
        self._cancelled = False
        self._items = self._run(method, request, plan, md, options)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def cancel(self) -> bool:
        self._cancelled = True
        call = self._call
        return bool(call.cancel()) if call is not None else True

    def close(self) -> None:
        self._items.close()

    def __getattr__(self, name: str) -> Any:
        if self._call is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._call, name)

    def _run(
        self, method: _Method, request: Any, plan: CallPlan, md: Metadata, options: dict[str, Any]
    ) -> Generator[Any, None, None]:
        requests = _Requests(request) if method._request_streaming else None
        closed = method._client._closed
        while True:
            attempt_timeout = plan.attempt_timeout(closed.is_set() or self._cancelled)
            try:
                self._call = method._callable(requests or request, timeout=attempt_timeout, metadata=md, **options)
            except ValueError:  # closed channel
                if not closed.is_set():
                    raise
                plan.attempt_timeout(True)
            received = False
            try:
                for item in self._call:
                    received = True
                    yield item
                return
            except grpc.RpcError as error:
                # Never re-send once an item arrived: the caller would see duplicates.
                replayable = not received and (requests is None or not requests.started)
                closed.wait(plan.after_failure(error, replayable, closed.is_set()))
            finally:
                self._call.cancel()  # no-op when finished; stops the stream when the caller gives up early


class RpcClient(ClientCore):
    """Client to one server: ``client.<name>.<method>(request)`` for each stub of ``stubs``, or the same typed as
    the generated stub: ``client.stub(MyServiceStub).<method>(request)``.

    :param host: server host name or address (IPv6 literals with or without brackets).
    :param port: server port.
    :param stubs: attribute name -> ``(StubClass, api_version)``, e.g. ``{"my": (MyServiceStub, MY_API_CURRENT)}``.
    :param timeout: how long a call keeps retrying (capped, jittered back-off) while the server is unreachable
        before raising ``RpcException(ResultCode.ERROR_RPC)``.
    :param name: client name sent with each call (shown in server dumps).
    :param credentials: ``grpc.ChannelCredentials`` for TLS/mTLS; plaintext when None.
    :param options: extra channel options.

    Each call carries the client's API version for its service. Per call, ``timeout=`` is the call's deadline,
    retries included. Failures raise ``RpcException`` with the server's ``ResultCode`` and message; a call on a
    closed client raises ``RpcException(ResultCode.ERROR_CANCELLED)``.

    Example::

        with RpcClient("127.0.0.1", 50051, {"my": (MyServiceStub, MyApiVersion.MY_API_CURRENT)}) as client:
            status = client.my.update(MyConfig(), timeout=5)
            status = client.stub(MyServiceStub).update(MyConfig(), timeout=5)   # the same, typed
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
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=self._options)
        else:
            self._channel = grpc.secure_channel(self.target, credentials, options=self._options)
        self._closed = threading.Event()
        self._register()

    def _build(self, attr: str, stub_class: type, metadata: Metadata) -> dict[str, Any]:
        return {n: _Method(self, c, rs, ss, metadata) for n, c, rs, ss in stub_methods(stub_class(self._channel))}

    def stub(self, stub_class: Callable[[grpc.Channel], _Stub], api_version: int | None = None) -> _Stub:
        """The methods of ``stub_class`` typed as that generated stub (retries, deadlines, metadata and
        ``RpcException`` included): ``client.stub(MyServiceStub).get(request)`` is ``client.my.get(request)``.

        ``stub_class`` is one of the client's ``stubs``, or any other generated stub with its ``api_version``.
        Calls, server streams (iterate; ``cancel()``) and request streams work as typed; ``future()`` and
        ``with_call()`` are not provided."""
        return self._typed(stub_class, api_version)  # type: ignore[return-value]

    def close(self) -> None:
        """Close the channel (calls in progress are cancelled; later calls raise ``RpcException``). Idempotent."""
        self._closed.set()
        self._channel.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # Services are set per instance from `stubs` (typed as Any); `stub()` gives them typed.
        raise AttributeError(f"{type(self).__name__} has no service {name!r}")
