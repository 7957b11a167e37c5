"""``RpcServer``: host versioned services with info, health, reflection, version checks and debug dumps."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import grpc

from grpc_helper._builtin import BuiltinServices
from grpc_helper._health import HealthServicer
from grpc_helper._interceptors import RpcServerInterceptor
from grpc_helper._limits import CallLimits
from grpc_helper._server_core import STOP_MARGIN, ServerCore, ServerView, drive_sync
from grpc_helper._signals import STOP_SIGNALS, TwoStageStop
from grpc_helper.client import RpcClient
from grpc_helper.descriptor import RpcServiceDescriptor, ServerInterceptor

_log = logging.getLogger("grpc_helper.server")


def _no_async_client(*_args: Any) -> NoReturn:
    raise TypeError("an asyncio manager (AsyncRpcManager) needs AsyncRpcServer")


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
    :param services: the built-in server, config, logger and events services: True for default ones, a
        ``BuiltinServices`` for yours (your ``Config`` and ``Events``), False for none (doc/config.md).

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
        services: BuiltinServices | bool = True,
    ) -> None:
        core = self._core = ServerCore(
            port, descriptors, host, dump_folder, HealthServicer(), admins=admins,
            limits=limits or CallLimits.for_threads(max_workers), services=services, stop=self.shutdown,
            secure=credentials is not None,
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

        def sync_client(host: str, port: int, stubs: dict[str, tuple[type, int]]) -> RpcClient:
            return RpcClient(host, port, stubs, name="auto-client", credentials=client_credentials)

        try:
            drive_sync(core.start_steps(self._server, credentials, (sync_client, _no_async_client), self._stop_server))
        except BaseException:
            self._finish(stopped=False)
            raise
        self._client: RpcClient = core.client(False, sync_client)

    def _stop_server(self, grace: float | None) -> bool:
        # grpcio's stop().wait() can hang after broken client streams: bound it.
        return self._server.stop(grace).wait((grace or 0) + STOP_MARGIN)

    def _finish(self, stopped: bool) -> None:
        self._executor.shutdown(wait=stopped)
        self._terminated.set()
        self._wake.set()

    @property
    def auto_client(self) -> RpcClient:
        """An ``RpcClient`` to every hosted service (``auto_client.info`` included)."""
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
        self._finish(drive_sync(core.stop_steps(grace, self._stop_server)))

    def serve_forever(self, grace: float | None = 5.0) -> None:
        """Serve until SIGINT/SIGTERM (or ``shutdown()`` from elsewhere), then shut down with ``grace``.

        A second signal during shutdown exits the process at once. Call it from the main thread::

            RpcServer(50051, [descriptor]).serve_forever()
        """
        stop = TwoStageStop(self._wake.set)
        if self._wake.is_set():
            stop.requested = True
        previous = {sig: signal.signal(sig, lambda signum, _frame: stop.on_signal(signum)) for sig in STOP_SIGNALS}
        try:
            self._wake.wait()
            self.shutdown(grace)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until ``shutdown()`` completed (True) or ``timeout`` expired (False)."""
        return self._terminated.wait(timeout)

    #: Block until the server stopped, for any reason (``shutdown()``, a signal, the server service).
    wait_shutdown = wait_for_termination

    def __enter__(self) -> RpcServer:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.shutdown()
