"""``RpcClient``: typed access to a server's services, with API versions, retries and ``RpcException``."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException, carries_result, from_rpc_error
from grpc_helper.metadata import client_metadata

#: Reconnect quickly once a server comes up (grpc's own backoff grows to minutes).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

#: Multi-callable classes of the sync and asyncio stacks -> (request streaming, response streaming).
_SHAPES: tuple[tuple[tuple[type, ...], bool, bool], ...] = (
    ((grpc.UnaryUnaryMultiCallable, grpc.aio.UnaryUnaryMultiCallable), False, False),
    ((grpc.UnaryStreamMultiCallable, grpc.aio.UnaryStreamMultiCallable), False, True),
    ((grpc.StreamUnaryMultiCallable, grpc.aio.StreamUnaryMultiCallable), True, False),
    ((grpc.StreamStreamMultiCallable, grpc.aio.StreamStreamMultiCallable), True, True),
)


def stub_methods(stub: Any) -> Iterator[tuple[str, Any, bool, bool]]:
    """``(name, multi-callable, request_streaming, response_streaming)`` for each method of a generated stub."""
    for name, value in vars(stub).items():
        for classes, request_streaming, response_streaming in _SHAPES:
            if isinstance(value, classes):
                yield name, value, request_streaming, response_streaming
                break


def target(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class RetryPolicy:
    """When and how long to retry a call while the server is unreachable (capped, jittered back-off)."""

    def __init__(self, timeout: float, first_delay: float = 0.05, max_delay: float = 1.0) -> None:
        self.timeout = timeout
        self.first_delay = first_delay
        self.max_delay = max_delay

    def delays(self) -> Iterator[float]:
        """Sleep durations between attempts, ending once ``timeout`` seconds have passed."""
        end = time.monotonic() + self.timeout
        delay = self.first_delay
        while (left := end - time.monotonic()) > 0:
            yield min(left, delay * random.uniform(0.5, 1.0))
            delay = min(self.max_delay, delay * 2)

    @staticmethod
    def retryable(error: grpc.RpcError) -> bool:
        """Transport failures are retried; answers from a grpc-helper server never are."""
        return error.code() == grpc.StatusCode.UNAVAILABLE and not carries_result(error)  # type: ignore[attr-defined]

    def unreachable(self, where: str, error: grpc.RpcError) -> RpcException:
        return RpcException(
            f"server {where} unreachable for {self.timeout:g}s: {error.details()}",  # type: ignore[attr-defined]
            ResultCode.ERROR_RPC,
        )


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


class ClientCore:
    """What ``RpcClient`` and ``AsyncRpcClient`` share (no I/O): target, name, retry policy, channel options,
    per-service metadata, and the decision taken after a failed attempt."""

    def __init__(
        self,
        host: str,
        port: int,
        stubs: Mapping[str, tuple[type, int]],
        timeout: float,
        name: str | None,
        options: Iterable[tuple[str, Any]],
    ) -> None:
        self.target = target(host, port)
        self.name = name or "grpc-helper-client"
        self.retry = RetryPolicy(timeout)
        self._options = [*CHANNEL_OPTIONS, *options]
        #: attribute -> (stub class, metadata sent with each call of that service)
        self._stub_specs = {
            attr: (stub_class, client_metadata(int(api_version), self.name)) for attr, (stub_class, api_version) in stubs.items()
        }

    def _attempts(self) -> Iterator[float]:
        """One value per attempt: how long to sleep if it fails, -1 once the retry budget is spent."""
        yield from self.retry.delays()
        yield -1.0  # sentinel: the budget is spent

    def _retry_delay(self, error: grpc.RpcError, delay: float, replayable: bool, closed: bool) -> float:
        """After a failed attempt: how long to sleep before retrying, or raise the ``RpcException``."""
        if not (replayable and self.retry.retryable(error)):
            raise from_rpc_error(error) from None
        if delay < 0 or closed:
            raise self.retry.unreachable(self.target, error) from None
        return delay


class _Method:
    """One method of a service: ``client.<service>.<method>(request, timeout=None, metadata=())``."""

    def __init__(
        self,
        callable_: Any,
        request_streaming: bool,
        response_streaming: bool,
        metadata: tuple[tuple[str, str], ...],
        client: RpcClient,
    ) -> None:
        self._callable = callable_
        self._request_streaming = request_streaming
        self._response_streaming = response_streaming
        self._metadata = metadata
        self._client = client

    def __call__(self, request: Any, timeout: float | None = None, metadata: Iterable[tuple[str, str]] = ()) -> Any:
        md = self._metadata + tuple(metadata)
        if self._response_streaming:
            return self._stream(request, timeout, md)
        requests = _Requests(request) if self._request_streaming else None
        for delay in self._client._attempts():
            try:
                return self._callable(requests or request, timeout=timeout, metadata=md)
            except grpc.RpcError as error:
                self._client._handle(error, delay, requests is None or not requests.started)
        raise AssertionError("unreachable")  # _attempts() ends by raising

    def _stream(self, request: Any, timeout: float | None, md: tuple[tuple[str, str], ...]) -> Iterator[Any]:
        requests = _Requests(request) if self._request_streaming else None
        for delay in self._client._attempts():
            received = False
            call = self._callable(requests or request, timeout=timeout, metadata=md)
            try:
                for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as error:
                # Never re-send once an item arrived: the caller would see duplicates.
                self._client._handle(error, delay, not received and (requests is None or not requests.started))
            finally:
                call.cancel()  # no-op when finished; stops the stream when the caller gives up early


class _Service:
    """The methods of one stub, as attributes."""

    def __init__(self, name: str, methods: Mapping[str, Any]) -> None:
        self._name = name
        self.__dict__.update(methods)

    def __repr__(self) -> str:
        return f"<service {self._name}: {', '.join(k for k in self.__dict__ if not k.startswith('_'))}>"


class RpcClient(ClientCore):
    """Client to one server: ``client.<name>.<method>(request)`` for each stub of ``stubs``.

    :param host: server host name or address.
    :param port: server port.
    :param stubs: attribute name -> ``(StubClass, api_version)``, e.g. ``{"my": (MyServiceStub, MY_API_CURRENT)}``.
    :param timeout: how long calls keep retrying (capped, jittered back-off) while the server is unreachable
        before raising ``RpcException(ResultCode.ERROR_RPC)``.
    :param name: client name sent with each call (shown in server dumps).
    :param credentials: ``grpc.ChannelCredentials`` for TLS/mTLS; plaintext when None.
    :param options: extra channel options.

    Each call carries the client's API version for its service; per call, ``timeout=`` sets a deadline.
    Failures raise ``RpcException`` with the server's ``ResultCode`` and message.

    Example::

        with RpcClient("127.0.0.1", 50051, {"my": (MyServiceStub, MyApiVersion.MY_API_CURRENT)}) as client:
            status = client.my.update(MyConfig(), timeout=5)
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
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=self._options)
        else:
            self._channel = grpc.secure_channel(self.target, credentials, options=self._options)
        self._closed = threading.Event()
        for attr, (stub_class, metadata) in self._stub_specs.items():
            methods = {n: _Method(c, rs, ss, metadata, self) for n, c, rs, ss in stub_methods(stub_class(self._channel))}
            setattr(self, attr, _Service(attr, methods))

    def _handle(self, error: grpc.RpcError, delay: float, replayable: bool) -> None:
        """After a failed attempt: sleep and return to retry, or raise the ``RpcException``."""
        self._closed.wait(self._retry_delay(error, delay, replayable, self._closed.is_set()))

    def close(self) -> None:
        """Close the channel (calls in progress are cancelled)."""
        self._closed.set()
        self._channel.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # Services are set per instance from `stubs`; this only tells type checkers attributes are dynamic.
        raise AttributeError(f"{type(self).__name__} has no service {name!r}")
