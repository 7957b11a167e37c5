"""What ``RpcClient`` and ``AsyncRpcClient`` share (no I/O): target, name, retry policy, channel options,
the stubs and the metadata of each service, and the ``_Service`` views that hold the methods."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc
import grpc.aio

from grpc_helper._client.retry import CallPlan, RetryPolicy
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

Metadata = tuple[tuple[str, Any], ...]


def stub_methods(stub: Any) -> Iterator[tuple[str, Any, bool, bool]]:
    """``(name, multi-callable, request_streaming, response_streaming)`` for each method of a generated stub."""
    for name, value in vars(stub).items():
        for classes, request_streaming, response_streaming in _SHAPES:
            if isinstance(value, classes):
                yield name, value, request_streaming, response_streaming
                break


class ShapeRecorder:
    """Stands in for a channel to learn a stub's methods and their shapes without connecting."""

    def unary_unary(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return False, False

    def unary_stream(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return False, True

    def stream_unary(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return True, False

    def stream_stream(self, *_: Any, **__: Any) -> tuple[bool, bool]:
        return True, True


def stub_shapes(stub_class: type) -> dict[str, tuple[bool, bool]]:
    """``{method: (request_streaming, response_streaming)}`` of a generated stub class."""
    return dict(vars(stub_class(ShapeRecorder())))


def target(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class Service:
    """The methods of one stub, as attributes (``client.<service>.<method>``)."""

    def __init__(self, name: str, methods: Mapping[str, Any]) -> None:
        self._name = name
        self.__dict__.update(methods)

    def __repr__(self) -> str:
        return f"<service {self._name}: {', '.join(k for k in self.__dict__ if not k.startswith('_'))}>"


class ClientCore(abc.ABC):
    """Target, name, retry policy, channel options, and the services (built by the driver's ``_build``)."""

    def __init__(
        self,
        host: str,
        port: int,
        stubs: Mapping[str, tuple[type, int]],
        timeout: float,
        name: str | None,
        options: Iterable[tuple[str, Any]],
        secure: bool = False,
    ) -> None:
        self.target = target(host, port)
        self.name = name or "grpc-helper-client"
        self.retry = RetryPolicy(timeout, secure=secure)
        self._options = [*CHANNEL_OPTIONS, *options]
        #: attribute -> (stub class, metadata sent with each call of that service)
        self._stub_specs: dict[str, tuple[type, Metadata]] = {}
        self._by_stub: dict[type, Service] = {}
        self._stubs = dict(stubs)

    def _register(self) -> None:
        """Build a service view per stub (called by the driver once it can build them)."""
        for attr, (stub_class, api_version) in self._stubs.items():
            if not attr.isidentifier() or attr.startswith("_") or hasattr(self, attr):
                raise ValueError(f"invalid service attribute {attr!r}: a public identifier not used by the client")
            setattr(self, attr, self._add(attr, stub_class, api_version))

    def _add(self, attr: str, stub_class: type, api_version: int) -> Service:
        metadata = client_metadata(int(api_version), self.name)
        self._stub_specs[attr] = (stub_class, metadata)
        service = self._by_stub[stub_class] = Service(attr, self._build(attr, stub_class, metadata))
        return service

    @abc.abstractmethod
    def _build(self, attr: str, stub_class: type, metadata: Metadata) -> dict[str, Any]:
        """The callables of one service (sync or asyncio), by method name."""

    def _typed(self, stub_class: Any, api_version: int | None) -> Service:
        """The service view of ``stub_class`` (registered at construction, or added with ``api_version``)."""
        service = self._by_stub.get(stub_class)
        if service is not None:
            return service
        if api_version is None:
            known = ", ".join(c.__name__ for c in self._by_stub) or "none"
            raise ValueError(f"{getattr(stub_class, '__name__', stub_class)} is not among this client's stubs ({known}): "
                             "pass api_version")
        return self._add(f"_{getattr(stub_class, '__name__', 'stub')}", stub_class, api_version)

    def _plan(self, timeout: float | None) -> CallPlan:
        return CallPlan(self.retry, self.target, timeout)
