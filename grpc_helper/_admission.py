"""Admission of one call: who calls (identity), may they (access rule), can they (quota); and request decoding.

``CallGate.admit`` is the one decision both server interceptors run before a manager sees a call. Requests are
decoded by ``safe_deserializer`` so that bytes that are not the expected message never reach a manager (nor
raise inside grpcio, which logs a traceback and answers INTERNAL): the call fails with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from grpc_helper._access import Access
from grpc_helper._identity import Identity, IdentityResolver
from grpc_helper._limits import QuotaTable
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException, bounded


@dataclass(frozen=True)
class Admission:
    """What an admitted call holds until it ends: its caller and its place in the caller's quota."""

    identity: Identity | None
    key: str
    streaming: bool


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
        #: False on plaintext servers: no caller has an identity there (and reading the auth context is skipped).
        self.secure = secure

    def admit(self, name: str, rule: Access, streaming: bool, context: Any) -> Admission:
        """Admit a call of method ``name`` or raise ``RpcException`` (UNAUTHENTICATED, PERMISSION_DENIED,
        RESOURCE_EXHAUSTED)."""
        identity = self.resolver.resolve(context.auth_context()) if self.secure else None
        if rule is not Access.ANYONE:
            refusal = rule.refusal(name, identity)
            if refusal is not None:
                raise refusal
        key = identity.name if identity is not None else peer_host(context.peer())
        self.quotas.acquire(key, streaming)
        return Admission(identity, key, streaming)

    def release(self, admission: Admission) -> None:
        self.quotas.release(admission.key, admission.streaming)


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


def check_decoded(request: Any) -> None:
    """Raise the ``RpcException`` of an undecodable request."""
    if type(request) is Undecodable:
        raise request.error


def checked_requests(requests: Iterator[Any]) -> Iterator[Any]:
    """A sync request stream that raises INVALID_ARGUMENT at the first undecodable message."""
    for request in requests:
        if type(request) is Undecodable:
            raise request.error
        yield request
