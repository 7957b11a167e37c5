"""The one place where the scheduler's errors become ``RpcException``\\ s (hence gRPC statuses)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from grpc_helper import ResultCode, RpcException
from grpc_helper.grid.model import GridClosedError, GridError, GridLimitError, GridParamError, GridUnknownError

_RC_BY_ERROR: dict[type[GridError], int] = {
    GridLimitError: ResultCode.ERROR_RESOURCE_EXHAUSTED,
    GridParamError: ResultCode.ERROR_PARAM_INVALID,
    GridUnknownError: ResultCode.ERROR_ITEM_UNKNOWN,
    # Every "the grid is shut down" situation (calls, ended streams) answers this one code.
    GridClosedError: ResultCode.ERROR_STREAM_SHUTDOWN,
}


def rpc_error(exc: GridError) -> RpcException:
    return RpcException(str(exc)[:1024], _RC_BY_ERROR.get(type(exc), ResultCode.ERROR))


@contextmanager
def grid_errors() -> Iterator[None]:
    try:
        yield
    except GridError as exc:
        raise rpc_error(exc) from None
