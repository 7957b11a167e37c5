"""Admission of one call: who calls (identity), may they (access rule), can they (quota); and request decoding.

``CallGate.admit`` is the one decision both server interceptors run before a manager sees a call. Requests are
decoded by ``safe_deserializer`` so that bytes that are not the expected message never reach a manager (nor
raise inside grpcio, which logs a traceback and answers INTERNAL): the call fails with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from grpc_helper._access import Access
from grpc_helper._debug import CallRegistry
from grpc_helper._identity import Identity, IdentityResolver, reset_current, set_current
from grpc_helper._limits import QuotaTable
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException, bounded


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string (``"ipv4:127.0.0.1:5000"`` -> ``"127.0.0.1"``)."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = address.rpartition(":")
        return host or address
    return peer


class CallGate:
    """Identity, access rule and quota for every call of one server."""

    def __init__(self, resolver: IdentityResolver, quotas: QuotaTable, secure: bool = True) -> None:
        self.resolver = resolver
        self.quotas = quotas
        self._hosts: dict[str, str] = {}  # peer -> quota key of an anonymous caller (bounded cache)
        #: False on plaintext servers: no caller has an identity there (and reading the auth context is skipped).
        self.secure = secure

    def admit(self, name: str, rule: Access, streaming: bool, context: Any) -> tuple[Identity | None, str]:
        """Admit a call of method ``name`` or raise ``RpcException`` (UNAUTHENTICATED, PERMISSION_DENIED,
        RESOURCE_EXHAUSTED). Returns the caller and its quota key (give it back with ``release``)."""
        identity = self.resolver.resolve(context.auth_context()) if self.secure else None
        if rule is not Access.ANYONE:
            refusal = rule.refusal(name, identity)
            if refusal is not None:
                raise refusal
        if identity is not None:
            key = identity.name
        else:
            peer = context.peer()
            key = self._hosts.get(peer) or self._host_of(peer)
        self.quotas.acquire(key, streaming)
        return identity, key

    def _host_of(self, peer: str) -> str:
        if len(self._hosts) > 4096:
            self._hosts.clear()
        key = self._hosts[peer] = peer_host(peer)
        return key

    def release(self, key: str, streaming: bool) -> None:
        self.quotas.release(key, streaming)


class Undecodable:
    """Stands for request bytes that are not the expected message (never given to a manager)."""

    __slots__ = ("error",)

    def __init__(self, error: RpcException) -> None:
        self.error = error


def safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns an ``Undecodable`` instead of raising."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    what = getattr(descriptor, "full_name", "the expected message")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any failure to decode is the caller's bad input
            detail = bounded(str(exc) or type(exc).__name__, 120)
            return Undecodable(
                RpcException(f"request is not a valid {what} ({len(data)} bytes): {detail}",
                             ResultCode.ERROR_PARAM_INVALID)
            )

    return deserialize


def checked_requests(requests: Iterator[Any]) -> Iterator[Any]:
    """A sync request stream that raises INVALID_ARGUMENT at the first undecodable message."""
    for request in requests:
        if type(request) is Undecodable:
            raise request.error
        yield request


class CallScope:
    """Everything a wrapped method does around its manager, for both interceptors: ``enter`` records the call,
    admits it through the gate and makes its identity current; ``leave`` undoes all of it; ``decoded`` checks
    the request (or wraps the request stream with ``stream_checker``)."""

    __slots__ = ("_calls", "_gate", "_rule", "_stream_checker", "_streaming", "method", "name")

    def __init__(
        self,
        method: str,
        rule: Access,
        calls: CallRegistry,
        gate: CallGate,
        *,
        request_streaming: bool,
        response_streaming: bool,
        stream_checker: Callable[[Any], Any],
    ) -> None:
        self.method = method
        self.name = method.rpartition("/")[2] or method
        self._rule = rule
        self._calls = calls
        self._gate = gate
        self._streaming = request_streaming or response_streaming
        self._stream_checker = stream_checker if request_streaming else None

    def enter(self, context: Any) -> tuple[int, str, Any]:
        """Admit the call or raise ``RpcException`` (the caller aborts with it: nothing is held then)."""
        key = self._calls.begin(self.method, context)
        try:
            identity, quota_key = self._gate.admit(self.name, self._rule, self._streaming, context)
        except BaseException:
            self._calls.end(key)
            raise
        return key, quota_key, set_current(identity)

    def leave(self, ticket: tuple[int, str, Any]) -> None:
        key, quota_key, token = ticket
        self._gate.release(quota_key, self._streaming)
        reset_current(token)
        self._calls.end(key)

    def decoded(self, request: Any) -> Any:
        """The request for the manager: checked, or its stream wrapped so undecodable messages raise."""
        if self._stream_checker is not None:
            return self._stream_checker(request)
        if type(request) is Undecodable:
            raise request.error
        return request
