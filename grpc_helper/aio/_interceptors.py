"""The asyncio server interceptor: the same API-version checks, admission, error mapping and call tracking as the sync one.

The decision per call (version check, cached wrapped handler) is ``InterceptorCore``'s; only the wrapping of
behaviors differs: ``async def`` methods are awaited, async generators' replies written (a reply may be given
already serialised, as ``bytes``). Plain ``def`` methods
(the info service, a generated servicer's UNIMPLEMENTED defaults) run on the event loop: they must not block.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

from grpc_helper._admission import Undecodable
from grpc_helper._interceptors import InterceptorCore, adapt_arity, behavior_of, rebuild_handler, unexpected_error
from grpc_helper.descriptor import Handler
from grpc_helper.errors import RpcException, to_status

if TYPE_CHECKING:  # generic in grpc-stubs only
    Context = grpc.aio.ServicerContext[Any, Any]
    AioServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    AioServerInterceptor = grpc.aio.ServerInterceptor


async def _abort(context: Context, method: str, exc: Exception) -> None:
    """Fail the call with the status carrying ``exc`` (every branch raises ``grpc.aio.AbortError``)."""
    if isinstance(exc, RpcException):
        await context.abort_with_status(to_status(exc))  # type: ignore[attr-defined]
    code = context.code()
    if code not in (None, grpc.StatusCode.OK):  # the method set a status itself (e.g. UNIMPLEMENTED): keep it
        await context.abort(code, context.details() or f"{type(exc).__name__}: {exc}")
    await context.abort_with_status(to_status(unexpected_error(method, exc)))  # type: ignore[attr-defined]


class AsyncRpcServerInterceptor(InterceptorCore, AioServerInterceptor):
    """Checks API versions, maps exceptions to statuses and records pending calls, for every call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        return self.handler_for(await continuation(details), details)  # type: ignore[return-value]

    def _refuse(self, error: RpcException) -> Callable[..., Any]:
        status = to_status(error)

        async def refuse(_request: Any, context: Context) -> None:
            await context.abort_with_status(status)  # type: ignore[attr-defined]

        return refuse

    def _wrap(self, method: str, handler: Handler) -> Handler:
        behavior = behavior_of(handler)
        call = adapt_arity(behavior)
        scope, watchdog = self._scope(method, handler, _checked_requests), self._watchdog

        async def refuse(context: Context, exc: RpcException) -> NoReturn:
            await context.abort_with_status(to_status(exc))  # type: ignore[attr-defined]
            raise exc  # not reached: abort raises

        is_coroutine = inspect.iscoroutinefunction(behavior)
        # A coroutine streams through context.write() (grpc.aio's other style): it is awaited, not iterated.
        if handler.response_streaming and not is_coroutine:
            items = call if inspect.isasyncgenfunction(behavior) else _async_items(call)

            async def stream(request: Any, context: Context) -> None:
                # Written with context.write() (not re-yielded) so that a send stuck on a reader that stopped
                # reading is awaited here, where the watchdog's cancellation can end the call with a status.
                ticket: tuple[int, str, Any] | None
                try:
                    ticket = scope.enter(context)
                except RpcException as exc:
                    await refuse(context, exc)
                task = asyncio.current_task()
                loop = asyncio.get_running_loop()
                stalled = False

                def cut() -> None:  # from the watchdog's thread
                    nonlocal stalled
                    stalled = True
                    if task is not None:
                        loop.call_soon_threadsafe(task.cancel)

                try:
                    async for item in items(scope.decoded(request), context):
                        watchdog.sending(context, cut)
                        await context.write(item if serialize is None or type(item) is bytes else serialize(item))
                        watchdog.sent(context)
                except grpc.aio.AbortError:
                    raise
                except BaseException as exc:
                    if stalled:
                        # However the cut surfaced (a cancelled write, or an error grpc made of it), the caller's
                        # quota is given back now: the status goes out after the stuck reply, whenever (if ever)
                        # the reader reads.
                        watchdog.sent(context)
                        scope.leave(ticket)
                        ticket = None
                        # Bounded: a reader that never reads again must not keep this task (and what the manager
                        # holds for it) alive; grpc then drops the call without a status.
                        try:
                            await asyncio.wait_for(
                                context.abort_with_status(to_status(watchdog.stalled_error())),  # type: ignore[attr-defined]
                                watchdog.timeout,
                            )
                        except TimeoutError:
                            raise exc from None
                    if not isinstance(exc, Exception):
                        raise
                    await _abort(context, method, exc)
                finally:
                    watchdog.sent(context)
                    if ticket is not None:
                        scope.leave(ticket)

            # Replies are serialised here, so that a manager may also yield one already encoded (bytes): a big
            # message then costs no protobuf object and no extra copy (the jobs service's log chunks).
            serialize = handler.response_serializer
            return rebuild_handler(handler, stream, safe=True, encoded_replies=True)

        async def unary(request: Any, context: Context) -> Any:
            try:  # no coroutine of its own: this runs for every call
                ticket = scope.enter(context)
            except RpcException as exc:
                await refuse(context, exc)
            try:
                if is_coroutine:
                    return await call(scope.decoded(request), context)
                return call(scope.decoded(request), context)  # a plain def runs on the loop: it must not block
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, method, exc)
            finally:
                scope.leave(ticket)

        return rebuild_handler(handler, unary, safe=True)


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """An asyncio request stream that raises INVALID_ARGUMENT at the first undecodable message."""
    async for request in requests:
        if type(request) is Undecodable:
            raise request.error
        yield request


def _async_items(call: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    """A plain ``def`` streaming method, as an async generator (it runs on the loop: it must not block)."""

    async def items(request: Any, context: Context) -> AsyncIterator[Any]:
        for item in call(request, context):
            yield item

    return items
