"""The server interceptor: API-version checks, admission, error mapping and call tracking for every call.

Per-method data (API range, access rule, wrapped handler) is computed once; per call the interceptor does one
metadata scan, one dict lookup and the admission (identity, access rule, quota: ``grpc_helper._admission``).
Requests are decoded without raising (undecodable bytes fail the call with INVALID_ARGUMENT). The checks and
translations are shared with the asyncio interceptor in ``grpc_helper.aio``.
"""

from __future__ import annotations

import abc
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from grpc_helper._access import Access
from grpc_helper._admission import CallGate, CallScope, checked_requests, safe_deserializer
from grpc_helper._debug import CallRegistry
from grpc_helper._limits import SendWatchdog
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.descriptor import Handler, MethodInfo, ServerInterceptor
from grpc_helper.errors import RpcException, bounded, to_status
from grpc_helper.metadata import API_VERSION_KEY

_log = logging.getLogger("grpc_helper.server")


def version_error(info: MethodInfo | None, metadata: Sequence[tuple[str, Any]] | None) -> RpcException | None:
    """Why a call's ``api-version`` metadata is refused, or None (calls without it are accepted)."""
    if info is None:
        return None
    for key, value in metadata or ():
        if key != API_VERSION_KEY:
            continue
        try:
            version = int(value)
        except ValueError:
            return RpcException(f"invalid {API_VERSION_KEY} metadata: {bounded(value)}", ResultCode.ERROR_PARAM_INVALID)
        if version < info.supported_api_version:
            return RpcException(
                f"client API version {version} is too old for {info.service} (server accepts "
                f"{info.supported_api_version}..{info.current_api_version}): upgrade the client",
                ResultCode.ERROR_API_CLIENT_TOO_OLD,
            )
        if version > info.current_api_version:
            return RpcException(
                f"client API version {version} is too new for {info.service} (server accepts "
                f"{info.supported_api_version}..{info.current_api_version}): upgrade the server",
                ResultCode.ERROR_API_SERVER_TOO_OLD,
            )
        return None
    return None


def unexpected_error(method: str, exc: BaseException) -> RpcException:
    """The INTERNAL error a caller gets for a manager's unexpected exception (logged with its traceback)."""
    _log.error("unexpected error in %s", method, exc_info=exc)
    return RpcException(f"{method} failed: {type(exc).__name__}: {bounded(exc, 200, quote=False)}", status=grpc.StatusCode.INTERNAL)


def adapt_arity(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Managers may implement a method as ``f(request)``; gRPC always calls ``f(request, context)``."""
    try:
        params = [
            p
            for p in inspect.signature(behavior).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return behavior
    if len(params) == 1 and params[0].kind != params[0].VAR_POSITIONAL:
        return lambda request, _context: behavior(request)
    return behavior


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behavior_of(handler: Handler) -> Callable[..., Any]:
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    assert behavior is not None, "a method handler has one behavior"
    return behavior


def rebuild_handler(
    handler: Handler, behavior: Callable[..., Any], *, safe: bool = False, encoded_replies: bool = False
) -> Handler:
    """A handler of the same shape and serializers as ``handler`` running ``behavior``.

    With ``safe``, requests are decoded by ``safe_deserializer`` (``behavior`` must check them); with
    ``encoded_replies``, ``behavior`` serialises its replies itself."""
    factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    deserializer = handler.request_deserializer
    return factory(  # type: ignore[no-any-return, operator]
        behavior,
        request_deserializer=safe_deserializer(deserializer) if safe else deserializer,  # type: ignore[arg-type]
        response_serializer=None if encoded_replies else handler.response_serializer,
    )


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, RpcException):
        context.abort_with_status(to_status(exc))
    if context.code() not in (None, grpc.StatusCode.OK):  # type: ignore[attr-defined]
        raise exc  # the manager aborted the call itself: keep its status
    context.abort_with_status(to_status(unexpected_error(method, exc)))


class InterceptorCore(abc.ABC):
    """The per-call decision both server interceptors share: refuse on API version, else the cached wrapped handler.

    Subclasses say how to wrap a handler (``_wrap``) and how to refuse a call (``_refuse``); wrapped handlers
    admit each call through ``gate`` and let ``watchdog`` cut streams whose reader stopped reading.
    """

    def __init__(
        self, methods: dict[str, MethodInfo], calls: CallRegistry, gate: CallGate, watchdog: SendWatchdog
    ) -> None:
        self._methods = methods
        self._calls = calls
        self._gate = gate
        self._watchdog = watchdog
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def _scope(self, method: str, handler: Handler, stream_checker: Callable[[Any], Any]) -> CallScope:
        info = self._methods.get(method)
        rule = info.access if info is not None else Access.ANYONE
        return CallScope(
            method, rule, self._calls, self._gate, request_streaming=handler.request_streaming,
            response_streaming=handler.response_streaming, stream_checker=stream_checker,
        )

    def handler_for(
        self, handler: Handler | None, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        if handler is None:
            return None
        method: str = details.method  # type: ignore[attr-defined]
        error = version_error(self._methods.get(method), details.invocation_metadata)  # type: ignore[attr-defined]
        if error is not None:
            return rebuild_handler(handler, self._refuse(error))
        entry = self._wrapped.get(method)
        if entry is None or entry[0] is not handler:
            entry = (handler, self._wrap(method, handler))
            self._wrapped[method] = entry
        return entry[1]

    @abc.abstractmethod
    def _wrap(self, method: str, handler: Handler) -> Handler:
        """The handler running ``handler``'s behaviour with call tracking and error mapping."""

    @abc.abstractmethod
    def _refuse(self, error: RpcException) -> Callable[..., Any]:
        """A behaviour failing the call with ``error``."""


class RpcServerInterceptor(InterceptorCore, ServerInterceptor):
    """Checks API versions, maps exceptions to statuses and records pending calls, for every call."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        return self.handler_for(continuation(details), details)

    def _refuse(self, error: RpcException) -> Callable[..., Any]:
        return _refuse(error)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        call = adapt_arity(behavior_of(handler))
        scope, watchdog = self._scope(method, handler, checked_requests), self._watchdog

        def enter(context: grpc.ServicerContext) -> Any:
            try:
                return scope.enter(context)
            except RpcException as exc:
                context.abort_with_status(to_status(exc))
                raise  # not reached: abort raises

        if handler.response_streaming:

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                ticket = enter(context)
                try:
                    for item in call(scope.decoded(request), context):
                        watchdog.sending(context, context.cancel)
                        yield item
                        watchdog.sent(context)
                except Exception as exc:
                    _abort(context, method, exc)
                finally:
                    watchdog.sent(context)
                    scope.leave(ticket)

            return rebuild_handler(handler, stream, safe=True)

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            ticket = enter(context)
            try:
                return call(scope.decoded(request), context)
            except Exception as exc:
                _abort(context, method, exc)
            finally:
                scope.leave(ticket)

        return rebuild_handler(handler, unary, safe=True)


def _refuse(error: RpcException) -> Callable[[Any, grpc.ServicerContext], Any]:
    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(to_status(error))

    return refuse
