"""``RpcServer``: host versioned services with info, health, reflection, version checks and debug dumps."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_helper._admission import CallGate
from grpc_helper._health import HealthServicer
from grpc_helper._identity import IdentityResolver
from grpc_helper._limits import CallLimits, QuotaTable, SendWatchdog
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.client import RpcClient
from grpc_helper.debug import CallRegistry, Usr2Dumper, dump
from grpc_helper.descriptor import MethodInfo, RpcServiceDescriptor, ServerInterceptor
from grpc_helper.errors import RpcException
from grpc_helper.info import InfoManager, info_descriptor
from grpc_helper.interceptors import RpcServerInterceptor
from grpc_helper.manager import RpcManager

_log = logging.getLogger("grpc_helper.server")

_WILDCARDS = {"", "[::]", "::", "0.0.0.0"}

#: Seconds a shutdown waits, past its grace period, for grpcio to report the calls ended.
STOP_MARGIN = 2.0


def _logged(hook: Callable[[], Any], what: str) -> Callable[[], Any]:
    def run() -> Any:
        try:
            result = hook()
        except Exception:
            _log.exception("%s failed", what)
            return None
        if inspect.isawaitable(result):
            return _logged_await(result, what)
        return result

    return run


async def _logged_await(result: Awaitable[Any], what: str) -> None:
    try:
        await result
    except Exception:
        _log.exception("%s failed", what)


class ServerCore:
    """What ``RpcServer`` and ``AsyncRpcServer`` share: descriptors, per-method data, health, calls."""

    def __init__(
        self,
        port: int,
        descriptors: Sequence[RpcServiceDescriptor],
        host: str,
        dump_folder: str | Path,
        health_servicer: Any = None,
        admins: Iterable[str] = (),
        limits: CallLimits | None = None,
    ) -> None:
        self.info = InfoManager()
        self.descriptors = [info_descriptor(self.info), *descriptors]
        names = [d.name for d in self.descriptors]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"service names must be unique in a server: {', '.join(duplicated)}")
        self.info.publish(self.descriptors)
        self.host = host
        self.requested_port = port
        self.port = 0
        self.dump_folder = Path(dump_folder)
        self.calls = CallRegistry()
        self.methods: dict[str, MethodInfo] = {}
        for d in self.descriptors:
            self.methods.update(d.method_infos())
        #: The standard health servicer (``grpc_health.v1.health.aio.HealthServicer`` for asyncio servers).
        self.health = health_servicer or HealthServicer()
        self.service_names = [d.full_name for d in self.descriptors]
        self.shutting_down = False
        self.lock = threading.Lock()
        self.limits = limits or CallLimits()
        self.gate = CallGate(IdentityResolver(admins), QuotaTable(self.limits))
        self.watchdog = SendWatchdog(self.limits.send_timeout)

    def interceptor_args(self) -> tuple[Any, ...]:
        """What a server interceptor of this server is built with."""
        return self.methods, self.calls, self.gate, self.watchdog

    @property
    def address(self) -> str:
        """``host:port`` as served (the real port once bound), labelling this server in dumps."""
        return f"{self.host}:{self.port or self.requested_port}"

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.requested_port}"

    @property
    def client_host(self) -> str:
        """Where a local client reaches this server."""
        return "127.0.0.1" if self.host in _WILDCARDS else self.host.strip("[]")

    def options(self, extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        # A second server must never silently share the port (grpc's default is SO_REUSEPORT on).
        return [("grpc.so_reuseport", 0), *extra]

    def port_busy(self, cause: Exception | None = None) -> RpcException:
        why = f": {cause}" if cause else ""
        return RpcException(f"cannot serve on {self.bind_address} (port busy or unavailable){why}", ResultCode.ERROR_PORT_BUSY)

    def register_builtin_services(self, server: Any) -> None:
        for d in self.descriptors:
            d.register_method(d.manager, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    @property
    def health_names(self) -> list[str]:
        """Names whose health the server publishes: the whole server ("") and each service."""
        return ["", *self.service_names]

    def set_health(self, status: int) -> None:
        for name in self.health_names:
            self.health.set(name, status)

    def managers(self) -> list[Any]:
        return [d.manager for d in self.descriptors]

    def make_client(self, credentials: grpc.ChannelCredentials | None, client_cls: type[Any]) -> Any:
        stubs = {d.name: (d.client_stub, d.current_api_version) for d in self.descriptors}
        return client_cls(self.client_host, self.port, stubs, name="auto-client", credentials=credentials)

    def dump(self) -> Path:
        return dump(self.dump_folder, [(self.address, self.calls)])

    @staticmethod
    def hooks(managers: Sequence[Any], name: str) -> Iterator[Callable[[], Any]]:
        """Each manager's ``name`` hook, last loaded first, wrapped so a failing one is logged, not raised."""
        for manager in reversed(managers):
            hook = getattr(manager, name, None)
            if callable(hook):
                yield _logged(hook, f"{type(manager).__name__}.{name}()")


class ServerView:
    """What both servers show of their ``ServerCore``: port, hosted services, on-demand dumps."""

    _core: ServerCore

    @property
    def port(self) -> int:
        """The bound port (the chosen one when created with port 0; 0 while an async server is not started)."""
        return self._core.port

    @property
    def descriptors(self) -> list[RpcServiceDescriptor]:
        """Hosted services, the info service first."""
        return list(self._core.descriptors)

    def dump(self) -> Path:
        """Write a debug dump (thread stacks, pending calls) now; returns its path."""
        return self._core.dump()


class RpcServer(ServerView):
    """A gRPC server hosting the services described by ``descriptors``, serving in its own threads.

    On top of the given services it hosts the info service, the standard health service (SERVING once
    every manager is loaded, NOT_SERVING from the start of shutdown) and reflection. Every call goes
    through the API-version check; ``RpcException`` raised by managers become gRPC statuses.

    :param port: TCP port; 0 picks a free one (see ``.port``).
    :param descriptors: the services to host.
    :param host: interface to bind (``"[::]"``: all).
    :param credentials: ``grpc.ServerCredentials`` for TLS/mTLS; plaintext when None.
    :param client_credentials: channel credentials for ``auto_client`` when the server uses TLS.
    :param max_workers: threads serving calls (each open stream holds one: host long-lived streams on
        ``AsyncRpcServer``, where a waiting stream costs memory, not a thread).
    :param interceptors: extra server interceptors, run after grpc-helper's own.
    :param options: extra gRPC server options.
    :param dump_folder: where SIGUSR2 dumps are written.
    :param admins: certificate common names that have the admin role (``Access.ADMIN``).
    :param limits: per-caller quotas (default: ``CallLimits.for_threads(max_workers)``).

    Raises ``RpcException(ResultCode.ERROR_PORT_BUSY)`` when the port is taken, and whatever a manager's
    ``load()`` raises (the port is released then).

    Example::

        with RpcServer(0, [descriptor], host="127.0.0.1") as server:
            print(server.auto_client.my.get(Request()))
    """

    def __init__(
        self,
        port: int,
        descriptors: Sequence[RpcServiceDescriptor],
        *,
        host: str = "[::]",
        credentials: grpc.ServerCredentials | None = None,
        client_credentials: grpc.ChannelCredentials | None = None,
        max_workers: int = 64,
        interceptors: Sequence[ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        dump_folder: str | Path = "/tmp",
        admins: Iterable[str] = (),
        limits: CallLimits | None = None,
    ) -> None:
        core = self._core = ServerCore(
            port, descriptors, host, dump_folder, admins=admins, limits=limits or CallLimits.for_threads(max_workers)
        )
        self._thread_prefix = f"rpc-server-{id(self):x}"
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=self._thread_prefix)
        self._server = grpc.server(
            self._executor,
            interceptors=[RpcServerInterceptor(*core.interceptor_args()), *interceptors],
            options=core.options(options),
        )
        self._terminated = threading.Event()
        self._wake = threading.Event()  # a stop request (signal) or a completed shutdown
        self._loaded: list[Any] = []
        self._client: RpcClient | None = None
        self._dumper_registered = False
        core.register_builtin_services(self._server)
        core.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if credentials is None:
                core.port = self._server.add_insecure_port(core.bind_address)
            else:
                core.port = self._server.add_secure_port(core.bind_address, credentials)
        except RuntimeError as exc:
            self._executor.shutdown(wait=False)
            raise core.port_busy(exc) from None
        if core.port == 0:
            self._executor.shutdown(wait=False)
            raise core.port_busy()
        self._server.start()
        try:
            self._client = core.make_client(client_credentials, RpcClient)
            for manager in core.managers():
                if isinstance(manager, RpcManager):
                    manager._attach(self._client)
                    manager.load()
                self._loaded.append(manager)
        except BaseException:
            self.shutdown()
            raise
        core.set_health(health_pb2.HealthCheckResponse.SERVING)
        self._dumper_registered = Usr2Dumper.register(id(self), core.address, core.dump_folder, core.calls)
        _log.info("serving %s on %s:%d", ", ".join(d.name for d in core.descriptors), host, core.port)

    @property
    def auto_client(self) -> RpcClient:
        """An ``RpcClient`` to every hosted service (``auto_client.info`` included)."""
        assert self._client is not None
        return self._client

    def shutdown(self, grace: float | None = None) -> None:
        """Stop serving: health NOT_SERVING, each manager's ``begin_shutdown()``, refuse new calls, give
        in-flight calls ``grace`` seconds (None: cancel them now), each manager's ``shutdown()``, join threads.
        Idempotent.

        Called from one of the server's own calls (a "shutdown" RPC), it returns at once and the shutdown
        proceeds in a thread of its own, so that call can still answer."""
        if threading.current_thread().name.startswith(self._thread_prefix):
            threading.Thread(target=self.shutdown, args=(grace,), name=f"shutdown-{self._thread_prefix}").start()
            return
        core = self._core
        with core.lock:
            if core.shutting_down:
                return
            core.shutting_down = True
        core.health.enter_graceful_shutdown()
        # Before stop(): even with no grace, managers can end their streams while they are still open.
        for hook in core.hooks(self._loaded, "begin_shutdown"):
            hook()
        # grpcio's stop().wait() can hang after broken client streams: bound it.
        stopped = self._server.stop(grace).wait((grace or 0) + STOP_MARGIN)
        if not stopped:
            _log.warning("calls still running %.1fs after the grace period: not waiting for them", STOP_MARGIN)
        core.watchdog.close()
        for hook in core.hooks(self._loaded, "shutdown"):
            hook()
        if self._client is not None:
            self._client.close()
        if self._dumper_registered:
            Usr2Dumper.unregister(id(self))
        self._executor.shutdown(wait=stopped)
        self._terminated.set()
        self._wake.set()

    def serve_forever(self, grace: float | None = 5.0) -> None:
        """Serve until SIGINT/SIGTERM (or ``shutdown()`` from elsewhere), then shut down with ``grace``.

        A second signal during shutdown exits the process at once. Call it from the main thread::

            RpcServer(50051, [descriptor]).serve_forever()
        """
        def on_signal(signum: int, _frame: Any) -> None:
            if self._wake.is_set():
                os._exit(128 + signum)
            _log.info("signal %d: shutting down (again to exit at once)", signum)
            self._wake.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._wake.wait()
            self.shutdown(grace)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until ``shutdown()`` completed (True) or ``timeout`` expired (False)."""
        return self._terminated.wait(timeout)

    def __enter__(self) -> RpcServer:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.shutdown()
