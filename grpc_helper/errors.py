"""``RpcException`` and the one place where it is translated to and from gRPC statuses.

On the wire an ``RpcException`` is a real gRPC status: a fitting ``grpc.StatusCode``, its message as the
status details, and its ``ResultCode`` in the rich status (``google.rpc.Status``) as a ``google.rpc.ErrorInfo``
with domain ``grpc-helper``. Any gRPC client sees a sensible code and text; ``RpcClient`` rebuilds the same
exception.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from grpc_helper.api.common_pb2 import ResultCode

ERROR_DOMAIN = "grpc-helper"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_S = grpc.StatusCode
_R = ResultCode

#: How each ``ResultCode`` travels as a gRPC status code (codes not listed, custom ones included: UNKNOWN).
STATUS_BY_RESULT: dict[int, grpc.StatusCode] = {
    _R.OK: _S.OK,
    _R.ERROR: _S.UNKNOWN,
    _R.ERROR_PORT_BUSY: _S.UNAVAILABLE,
    _R.ERROR_API_CLIENT_TOO_OLD: _S.FAILED_PRECONDITION,
    _R.ERROR_API_SERVER_TOO_OLD: _S.FAILED_PRECONDITION,
    _R.ERROR_RPC: _S.UNAVAILABLE,
    _R.ERROR_STREAM_SHUTDOWN: _S.UNAVAILABLE,
    _R.ERROR_DEADLINE: _S.DEADLINE_EXCEEDED,
    _R.ERROR_CANCELLED: _S.CANCELLED,
    _R.ERROR_PARAM_MISSING: _S.INVALID_ARGUMENT,
    _R.ERROR_PARAM_INVALID: _S.INVALID_ARGUMENT,
    _R.ERROR_ITEM_UNKNOWN: _S.NOT_FOUND,
    _R.ERROR_ITEM_EXISTS: _S.ALREADY_EXISTS,
    _R.ERROR_STATE_UNEXPECTED: _S.FAILED_PRECONDITION,
    _R.ERROR_PERMISSION_DENIED: _S.PERMISSION_DENIED,
    _R.ERROR_UNAUTHENTICATED: _S.UNAUTHENTICATED,
    _R.ERROR_RESOURCE_EXHAUSTED: _S.RESOURCE_EXHAUSTED,
    _R.ERROR_NOT_IMPLEMENTED: _S.UNIMPLEMENTED,
}

#: The ``ResultCode`` given to a failure that carries no grpc-helper details (foreign servers, transport errors).
RESULT_BY_STATUS: dict[grpc.StatusCode, int] = {
    _S.UNAVAILABLE: _R.ERROR_RPC,
    _S.DEADLINE_EXCEEDED: _R.ERROR_DEADLINE,
    _S.CANCELLED: _R.ERROR_CANCELLED,
    _S.INVALID_ARGUMENT: _R.ERROR_PARAM_INVALID,
    _S.NOT_FOUND: _R.ERROR_ITEM_UNKNOWN,
    _S.ALREADY_EXISTS: _R.ERROR_ITEM_EXISTS,
    _S.FAILED_PRECONDITION: _R.ERROR_STATE_UNEXPECTED,
    _S.PERMISSION_DENIED: _R.ERROR_PERMISSION_DENIED,
    _S.UNAUTHENTICATED: _R.ERROR_UNAUTHENTICATED,
    _S.RESOURCE_EXHAUSTED: _R.ERROR_RESOURCE_EXHAUSTED,
    _S.UNIMPLEMENTED: _R.ERROR_NOT_IMPLEMENTED,
}

#: Longest status message sent; longer ones (a manager quoting huge input) are cut, so they always fit the
#: trailing metadata.
MAX_MESSAGE = 1024


def bounded(value: object, limit: int = 80, *, quote: bool = True) -> str:
    """Caller input (quoted, ``repr``-style) for an error message, cut to ``limit`` characters.

    >>> bounded("x" * 1000, 10)
    "'xxxxxxxxx…' (1000 chars)"
    >>> bounded("x" * 1000, 10, quote=False)
    'xxxxxxxxx… (1000 chars)'
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text) if quote else text
    if quote:
        return f"{text[: limit - 1]!r}…({len(text)} chars)".replace("'…(", "…' (")
    return f"{text[: limit - 1]}… ({len(text)} chars)"


def result_name(rc: int) -> str:
    """Name of a result code (``"ERROR_ITEM_UNKNOWN"``), or ``"RC_<n>"`` for a service-specific one."""
    try:
        return str(ResultCode.Name(rc))  # type: ignore[arg-type]
    except ValueError:
        return f"RC_{rc}"


class RpcException(Exception):
    """An error with a ``ResultCode``, raised by managers and by ``RpcClient``.

    ``status`` is the gRPC status code used on the wire; by default it follows ``STATUS_BY_RESULT``.

    >>> raise RpcException("no such job: 42", ResultCode.ERROR_ITEM_UNKNOWN)
    """

    def __init__(self, message: str, rc: int = ResultCode.ERROR, *, status: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rc = int(rc)
        self.status = status or STATUS_BY_RESULT.get(self.rc, grpc.StatusCode.UNKNOWN)

    @classmethod
    def from_grpc_error(cls, error: grpc.RpcError) -> RpcException:
        """The ``RpcException`` a failed grpcio call (sync or ``grpc.aio``) carries, for code that uses raw
        stubs: the server's ``ResultCode`` when it is a grpc-helper server, else one fitting the status."""
        return from_rpc_error(error)

    def __str__(self) -> str:
        return f"{self.message} ({result_name(self.rc)})"

    def __repr__(self) -> str:
        return f"RpcException({self.message!r}, {result_name(self.rc)}, status={self.status.name})"


def to_status(exc: RpcException) -> grpc.Status:
    """The gRPC status (code, message, rich details in trailing metadata) that carries ``exc``."""
    info = error_details_pb2.ErrorInfo(reason=result_name(exc.rc), domain=ERROR_DOMAIN, metadata={"rc": str(exc.rc)})
    detail = any_pb2.Any()
    detail.Pack(info)
    message = exc.message if len(exc.message) <= MAX_MESSAGE else exc.message[: MAX_MESSAGE - 1] + "…"
    rich = status_pb2.Status(code=exc.status.value[0], message=message, details=[detail])
    return _Status(exc.status, message, ((STATUS_DETAILS_KEY, rich.SerializeToString()),))


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, bytes], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _carried_result(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN and info.metadata.get("rc", "").isdigit():
                return int(info.metadata["rc"])
    return None


def from_status(
    code: grpc.StatusCode | None, details: str | None, trailing_metadata: Iterable[tuple[str, str | bytes]] | None
) -> RpcException:
    """Rebuild the ``RpcException`` a failed call carries (or a fitting one for a foreign error)."""
    code = code or grpc.StatusCode.UNKNOWN
    rc = _carried_result(trailing_metadata)
    message = details or code.name
    if rc is None:
        return RpcException(message, RESULT_BY_STATUS.get(code, ResultCode.ERROR), status=code)
    return RpcException(message, rc, status=code)


def from_rpc_error(error: grpc.RpcError) -> RpcException:
    """``from_status`` for an error raised by a grpcio call (sync or ``grpc.aio``)."""
    call: grpc.Call = error  # type: ignore[assignment]
    return from_status(call.code(), call.details(), call.trailing_metadata())  # type: ignore[arg-type]


def carries_result(error: grpc.RpcError) -> bool:
    """True when the failure was raised by a grpc-helper server (so it is an answer, not a transport problem)."""
    call: grpc.Call = error  # type: ignore[assignment]
    return _carried_result(call.trailing_metadata()) is not None  # type: ignore[arg-type]
