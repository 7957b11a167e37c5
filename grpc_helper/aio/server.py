"""``AsyncRpcServer``: the asyncio twin of ``RpcServer``, on ``grpc.aio``, sharing its ``ServerCore``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from grpc_helper._builtin import BuiltinServices
from grpc_helper._health import AsyncHealthServicer
from grpc_helper._limits import CallLimits
from grpc_helper._server_core import STOP_MARGIN, ServerCore, ServerView, drive_async
from grpc_helper._signals import STOP_SIGNALS, TwoStageStop
from grpc_helper.aio._interceptors import AsyncRpcServerInterceptor
from grpc_helper.aio.client import AsyncRpcClient
from grpc_helper.client import RpcClient
from grpc_helper.descriptor import Handler, RpcServiceDescriptor

if TYPE_CHECKING:  # generic in grpc-stubs only
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    GenericHandler = grpc.GenericRpcHandler

_log = logging.getLogger("grpc_helper.server")

#: ``resolve(handler, details)``: the handler to run for a call of ``handler``'s method (None: refuse it).
Resolve = Callable[[Handler, grpc.HandlerCallDetails], Handler | None]


class HandlerTable(GenericHandler):
    """Every method the server hosts, found with one dict lookup, each call resolved by ``resolve``.

    Why not grpc.aio's own registration: for each *registered* method (generated ``add_*_to_server`` functions
    register every method of their service) the aio server keeps a pending request, and its accept loop waits
    on all of them for every call (``asyncio.wait``: a few µs per registered method, per call, whatever the
    method called). Here the server has no registered method: one pending request, one generic handler.
    ``resolve`` is the grpc-helper interceptor's decision (version check, wrapped handler) when no extra
    interceptor is given, so the call does not go through grpc.aio's interceptor coroutines either.
    """

    def __init__(self, resolve: Resolve | None) -> None:
        self._methods: dict[str, Handler] = {}
        self._generic: list[GenericHandler] = []
        self._resolve = resolve

    def add_registered(self, service_name: str, handlers: Mapping[str, Handler]) -> None:
        for method, handler in handlers.items():
            self._methods[f"/{service_name}/{method}"] = handler

    def add_generic(self, handlers: Iterable[GenericHandler]) -> None:
        # Generated code registers its service both ways: the registered methods are found first; the generic
        # handler serves the methods of older generated code and of hand-made handlers (reflection).
        self._generic.extend(handlers)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._methods.get(handler_call_details.method)  # type: ignore[attr-defined]
        if handler is None:
            for generic in self._generic:
                handler = generic.service(handler_call_details)
                if handler is not None:
                    break
            else:
                return None
        if self._resolve is None:
            return handler
        return self._resolve(handler, handler_call_details)


class _Registrar(grpc.aio.Server):  # type: ignore[misc]
    """The server as the services see it while they register: their handlers go to the ``HandlerTable``."""

    def __init__(self, server: grpc.aio.Server, table: HandlerTable) -> None:
        self._server = server
        self._table = table

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[GenericHandler]) -> None:
        self._table.add_generic(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, Handler]) -> None:
        self._table.add_registered(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)


class AsyncRpcServer(ServerView):
    """A ``grpc.aio`` server hosting the services described by ``descriptors``, on the running event loop.

    The same services as ``RpcServer`` are added (info, health, reflection), every call goes through the same
    API-version check and ``RpcException`` mapping, SIGUSR2 dumps work (when started from the main thread).
    Managers are ``AsyncRpcManager``\\ s: their methods are ``async def`` (or async generators for streamed
    replies) and their ``load()``/``shutdown()`` are awaited. Plain ``def`` methods and sync ``load()`` run on
    the event loop too: they must not block.

    Nothing happens until ``await start()`` (or ``async with``): it binds, serves, then loads the managers
    (health reports SERVING once they all are). Parameters are ``RpcServer``'s, except ``max_workers``.

    Raises ``RpcException(ResultCode.ERROR_PORT_BUSY)`` from ``start()`` when the port is taken, and whatever
    a manager's ``load()`` raises (the port is released then).

    Example::

        async with AsyncRpcServer(0, [descriptor], host="127.0.0.1") as server:
            print(await server.auto_client.my.get(Request()))
            await server.wait_for_termination()
    """

    def __init__(
        self,
        port: int,
        descriptors: Sequence[RpcServiceDescriptor],
        *,
        host: str = "[::]",
        credentials: grpc.ServerCredentials | None = None,
        client_credentials: grpc.ChannelCredentials | None = None,
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        dump_folder: str | Path = "/tmp",
        admins: Iterable[str] = (),
        limits: CallLimits | None = None,
        services: BuiltinServices | bool = True,
    ) -> None:
        self._core = ServerCore(
            port, descriptors, host, dump_folder, AsyncHealthServicer(), admins=admins, limits=limits,
            services=services, stop=self.shutdown,
            secure=credentials is not None,
        )
        self._credentials = credentials
        self._client_credentials = client_credentials
        self._interceptors = tuple(interceptors)
        self._options = options
        self._server: grpc.aio.Server | None = None
        self._client: AsyncRpcClient | None = None
        self._terminated: asyncio.Event | None = None
        self._stopping: asyncio.Future[None] | None = None

    @property
    def auto_client(self) -> AsyncRpcClient:
        """An ``AsyncRpcClient`` to every hosted service (``auto_client.info`` included); set by ``start()``."""
        if self._client is None:
            raise RuntimeError("the server is not started")
        return self._client

    def _clients(self) -> tuple[Any, Any]:
        credentials = self._client_credentials

        def sync_client(host: str, port: int, stubs: dict[str, tuple[type, int]]) -> RpcClient:
            return RpcClient(host, port, stubs, name="auto-client", credentials=credentials)

        def async_client(host: str, port: int, stubs: dict[str, tuple[type, int]]) -> AsyncRpcClient:
            return AsyncRpcClient(host, port, stubs, name="auto-client", credentials=credentials)

        return sync_client, async_client

    async def _stop_server(self, grace: float | None) -> bool:
        if self._server is None:
            return True
        try:  # bounded, whatever the clients did
            await asyncio.wait_for(self._server.stop(grace), (grace or 0) + STOP_MARGIN)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        """Bind, serve, load the managers, then report SERVING. Raises if already started."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        core = self._core
        self._terminated = asyncio.Event()
        interceptor = AsyncRpcServerInterceptor(*core.interceptor_args())
        if self._interceptors:  # ours runs first, as an interceptor
            table = HandlerTable(None)
            self._server = grpc.aio.server(interceptors=[interceptor, *self._interceptors], options=core.options(self._options))
        else:  # ours decides when the method is looked up (no interceptor)
            table = HandlerTable(interceptor.handler_for)
            self._server = grpc.aio.server(options=core.options(self._options))
        self._server.add_generic_rpc_handlers((table,))
        try:
            await drive_async(
                core.start_steps(_Registrar(self._server, table), self._credentials, self._clients(), self._stop_server)
            )
        except BaseException:
            with core.lock:
                core.shutting_down = True
            self._terminated.set()
            raise
        self._client = core.client(True, self._clients()[1])

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop serving: health NOT_SERVING, refuse new calls, give in-flight calls ``grace`` seconds
        (None: cancel them now), await each manager's ``shutdown()``, close ``auto_client``. Idempotent:
        a second call waits for the first one to complete.

        The work runs in a task of its own: cancelling the caller does not leave the server half stopped. From
        one of the server's own calls, use ``asyncio.create_task(server.shutdown(grace))`` and return (awaiting
        it would wait for that very call until ``grace`` expires)."""
        with self._core.lock:
            self._core.shutting_down = True
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown(grace))
        await asyncio.shield(self._stopping)

    async def _shutdown(self, grace: float | None) -> None:
        try:
            await drive_async(self._core.stop_steps(grace, self._stop_server))
        finally:
            if self._terminated is not None:
                self._terminated.set()

    async def serve_forever(self, grace: float | None = 5.0) -> None:
        """Start if needed, serve until SIGINT/SIGTERM (or ``shutdown()`` from elsewhere), then shut down with
        ``grace``. A second signal during shutdown exits the process at once. Run it in the main thread's loop::

            asyncio.run(AsyncRpcServer(50051, [descriptor]).serve_forever())
        """
        if self._server is None:
            await self.start()
        assert self._terminated is not None
        loop = asyncio.get_running_loop()
        requested = asyncio.Event()
        stop = TwoStageStop(requested.set)
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.on_signal, sig)
        try:
            ended = asyncio.ensure_future(self._terminated.wait())
            asked = asyncio.ensure_future(requested.wait())
            await asyncio.wait([ended, asked], return_when=asyncio.FIRST_COMPLETED)
            for waiter in (ended, asked):
                waiter.cancel()
            await self.shutdown(grace)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Wait until ``shutdown()`` completed (True) or ``timeout`` expired (False)."""
        if self._terminated is None:
            raise RuntimeError("the server is not started")
        if self._terminated.is_set():
            return True
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return False
        return True

    #: Wait until the server stopped, for any reason (``shutdown()``, the server service, a signal).
    wait_shutdown = wait_for_termination

    async def __aenter__(self) -> AsyncRpcServer:
        await self.start()
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        await self.shutdown()
