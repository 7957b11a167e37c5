"""What ``RpcServer`` and ``AsyncRpcServer`` share: the hosted services, per-method data, health, admission, and
the server lifecycle (start: bind, serve, load; stop: drain, stop, unload) written once.

The lifecycle is a pair of generators (``ServerCore.start_steps``/``stop_steps``) that yield what must be
waited for: ``drive_sync`` runs them on the sync server (every step is a plain value), ``drive_async`` on the
asyncio server (awaitable steps are awaited). The twins differ only in how they wait.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from grpc_helper._admission import CallGate
from grpc_helper._builtin import BuiltinServices, resolve
from grpc_helper._debug import CallRegistry, Usr2Dumper, dump
from grpc_helper._identity import IdentityResolver
from grpc_helper._limits import CallLimits, QuotaTable, SendWatchdog
from grpc_helper._reflection import enable_reflection
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.config import CoreConfig
from grpc_helper.descriptor import MethodInfo, RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.info import InfoManager, info_descriptor

_log = logging.getLogger("grpc_helper.server")

_WILDCARDS = {"", "[::]", "::", "0.0.0.0"}

#: Seconds a shutdown waits, past its grace period, for grpcio to report the calls ended.
STOP_MARGIN = 2.0

#: A lifecycle: yields values or awaitables to wait for, receives their results, returns its own.
Steps = Generator[Any, Any, Any]


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


def drive_sync(steps: Steps) -> Any:
    """Run a lifecycle on the sync server: each step is already done when yielded."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = step, None
        if inspect.isawaitable(step):
            if inspect.iscoroutine(step):
                step.close()
            value, error = None, TypeError("an asyncio manager (async def hooks) needs AsyncRpcServer")


async def drive_async(steps: Steps) -> Any:
    """Run a lifecycle on the asyncio server: awaitable steps are awaited."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = step, None
        if inspect.isawaitable(step):
            try:
                value = await step
            except BaseException as exc:  # given back to the lifecycle, which cleans up and re-raises
                value, error = None, exc


class ServerCore:
    """One server's state and lifecycle, whatever the stack.

    :param client_factories: ``(sync, async)`` factories of the auto-client, each taking ``(host, port, stubs)``;
        a manager gets the one matching its kind (``AsyncRpcManager`` the asyncio client, others the sync one).
    """

    def __init__(
        self,
        port: int,
        descriptors: Sequence[RpcServiceDescriptor],
        host: str,
        dump_folder: str | Path,
        health_servicer: Any,
        admins: Iterable[str] = (),
        limits: CallLimits | None = None,
        services: BuiltinServices | bool = False,
        stop: Callable[[float], Any] | None = None,
        secure: bool = True,
    ) -> None:
        self.info = InfoManager()
        #: The built-in services (server, config, logger, events); None when opted out.
        self.services = resolve(services)
        builtin: list[RpcServiceDescriptor] = []
        if self.services is not None and stop is not None:
            grace = self.services.config[CoreConfig.SHUTDOWN_GRACE]
            is_async = inspect.iscoroutinefunction(stop)  # AsyncRpcServer.shutdown: listeners hold no thread
            builtin = self.services.descriptors(descriptors, lambda: stop(grace), asyncio=is_async)
        self.descriptors = [info_descriptor(self.info), *descriptors, *builtin]
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
        #: The standard health servicer (sync or asyncio flavour, from ``grpc_helper._health``).
        self.health = health_servicer
        self.service_names = [d.full_name for d in self.descriptors]
        self.shutting_down = False
        self.lock = threading.Lock()
        self.limits = limits or CallLimits()
        self.gate = CallGate(IdentityResolver(admins), QuotaTable(self.limits), secure)
        self.watchdog = SendWatchdog(self.limits.send_timeout)
        self.loaded: list[Any] = []
        #: Auto-clients made for the hosted managers, by kind (``False``: sync, ``True``: asyncio).
        self.clients: dict[bool, Any] = {}
        self.dumper_registered = False

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
        enable_reflection([*self.service_names, health.SERVICE_NAME], server)  # v1 and v1alpha

    @property
    def health_names(self) -> list[str]:
        """Names whose health the server publishes: the whole server ("") and each service."""
        return ["", *self.service_names]

    def managers(self) -> list[Any]:
        return [d.manager for d in self.descriptors]

    def client(self, is_async: bool, factory: Callable[[str, int, dict[str, tuple[type, int]]], Any]) -> Any:
        """The auto-client of one kind, made on first use."""
        if is_async not in self.clients:
            stubs = {d.name: (d.client_stub, d.current_api_version) for d in self.descriptors}
            self.clients[is_async] = factory(self.client_host, self.port, stubs)
        return self.clients[is_async]

    def dump(self) -> Path:
        return dump(self.dump_folder, [(self.address, self.calls)])

    @staticmethod
    def hooks(managers: Sequence[Any], name: str) -> Iterator[Callable[[], Any]]:
        """Each manager's ``name`` hook, last loaded first, wrapped so a failing one is logged, not raised."""
        for manager in reversed(managers):
            hook = getattr(manager, name, None)
            if callable(hook):
                yield _logged(hook, f"{type(manager).__name__}.{name}()")

    # -- the lifecycle ---------------------------------------------------------------------------------------

    def _health_steps(self, status: int) -> Steps:
        for name in self.health_names:
            yield self.health.set(name, status)

    def start_steps(
        self,
        server: Any,
        credentials: grpc.ServerCredentials | None,
        client_factories: tuple[Callable[..., Any], Callable[..., Any]],
        stop_server: Callable[[float | None], Any],
    ) -> Steps:
        """Bind, serve, attach each manager's client and load it, report SERVING, handle SIGUSR2.

        Raises ``RpcException(ERROR_PORT_BUSY)`` when the port is taken, and what a ``load()`` raises (after
        stopping what was started)."""
        self.register_builtin_services(server)
        yield from self._health_steps(health_pb2.HealthCheckResponse.NOT_SERVING)
        cause: Exception | None = None
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.bind_address)
            else:
                self.port = server.add_secure_port(self.bind_address, credentials)
        except RuntimeError as exc:
            cause = exc
        if cause is not None or self.port == 0:
            self.port = 0
            yield from self.stop_steps(None, stop_server)
            raise self.port_busy(cause) from None
        yield server.start()
        try:
            for d in self.descriptors:
                manager = d.manager
                attach = getattr(manager, "_attach", None)
                if callable(attach):
                    is_async = bool(getattr(manager, "is_async", False))
                    factory = client_factories[is_async]
                    attach(lambda is_async=is_async, factory=factory: self.client(is_async, factory), d.name)
                load = getattr(manager, "load", None)
                if callable(load):
                    yield load()
                self.loaded.append(manager)
        except BaseException:
            yield from self.stop_steps(None, stop_server)
            raise
        yield from self._health_steps(health_pb2.HealthCheckResponse.SERVING)
        self.dumper_registered = Usr2Dumper.register(id(self), self.address, self.dump_folder, self.calls)
        _log.info("serving %s on %s:%d", ", ".join(d.name for d in self.descriptors), self.host, self.port)

    def stop_steps(self, grace: float | None, stop_server: Callable[[float | None], Any]) -> Steps:
        """Health NOT_SERVING, managers' ``begin_shutdown()``, stop with ``grace`` (bounded), managers'
        ``shutdown()``, close the auto-clients. Returns whether every call ended in time."""
        yield self.health.enter_graceful_shutdown()
        # Before stop(): even with no grace, managers can end their streams while they are still open.
        for hook in self.hooks(self.loaded, "begin_shutdown"):
            yield hook()
        stopped = yield stop_server(grace)
        if not stopped:
            _log.warning("calls still running %.1fs after the grace period: not waiting for them", STOP_MARGIN)
        self.watchdog.close()
        for hook in self.hooks(self.loaded, "shutdown"):
            yield hook()
        for client in self.clients.values():
            yield client.close()
        if self.dumper_registered:
            Usr2Dumper.unregister(id(self))
        return bool(stopped)


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

    @property
    def services(self) -> BuiltinServices | None:
        """The built-in services (``services.config``, ``services.events``); None when opted out."""
        return self._core.services

    def dump(self) -> Path:
        """Write a debug dump (thread stacks, pending calls) now; returns its path."""
        return self._core.dump()
