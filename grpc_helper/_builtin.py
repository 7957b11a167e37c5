"""``BuiltinServices``: the server, config, logger and events services every server hosts (unless opted out)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc_helper
from grpc_helper import Access
from grpc_helper.api import (
    config_pb2,
    config_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    logger_pb2,
    logger_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
)
from grpc_helper.config import Config, ConfigManager, CoreConfig
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.events import AsyncEventsManager, Events, EventsManager
from grpc_helper.logger import LogFiles, LoggerManager
from grpc_helper.server_service import ServerManager

#: Client attribute -> (stub, API version) of the built-in services, for ``RpcClient(..., stubs)``.
BUILTIN_STUBS: dict[str, tuple[type, int]] = {
    "server": (server_pb2_grpc.ServerServiceStub, server_pb2.SERVER_API_CURRENT),
    "config": (config_pb2_grpc.ConfigServiceStub, config_pb2.CONFIG_API_CURRENT),
    "logger": (logger_pb2_grpc.LoggerServiceStub, logger_pb2.LOGGER_API_CURRENT),
    "events": (events_pb2_grpc.EventsServiceStub, events_pb2.EVENTS_API_CURRENT),
}

LOGS_FOLDER = "logs"

_READ_OR_ADMIN = {"get": Access.AUTHENTICATED, "*": Access.ADMIN}
#: Who may call what: reads for authenticated callers (client certificate), changes and shutdown for admins.
ACCESS: dict[str, Any] = {
    "server": Access.ADMIN,
    "config": _READ_OR_ADMIN,
    "logger": _READ_OR_ADMIN,
    "events": {"listen": Access.AUTHENTICATED, "*": Access.ADMIN},
}


class BuiltinServices:
    """The services a server hosts besides yours: ``server`` (remote shutdown), ``config``, ``logger`` and
    ``events``. A server makes its own unless given one (``RpcServer(..., services=BuiltinServices(...))``),
    or hosts none of them with ``services=False``.

    :param config: the server's configuration (default: ``Config()``, code defaults of ``CoreConfig``).
    :param events: the server's event stream (default: one sized by the ``rpc-events-*`` items of ``config``).
        Config changes are sent on it as ``config-changed`` events (properties ``name``, ``value``, ``origin``),
        logger level changes as ``logger-changed`` (``name``, ``level``).

    Example::

        config = Config([MyConfig], folders=Folders(workspace=Path("state")))
        events = Events()
        server = RpcServer(0, [my_descriptor(config, events)], services=BuiltinServices(config, events))
    """

    #: Client attribute -> (stub, API version) of the built-in services, for ``RpcClient(host, port, STUBS)``.
    STUBS = BUILTIN_STUBS

    def __init__(self, config: Config | None = None, events: Events | None = None) -> None:
        self.config = config or Config()
        self.events = events or Events(self.config[CoreConfig.EVENTS_WINDOW], self.config[CoreConfig.EVENTS_KEEPALIVE])
        self.config.subscribe(self._config_changed)
        self._hosted = False

    def _config_changed(self, item: Any, text: str, origin: str) -> None:
        self.events.send("config-changed", {"name": item.name, "value": text, "origin": origin})

    def _logger_changed(self, name: str, level: str) -> None:
        self.events.send("logger-changed", {"name": name, "level": level})

    @property
    def log_folder(self) -> Path | None:
        """Where per-service log files go (``<workspace>/logs``), when ``rpc-log-files`` is on."""
        workspace = self.config.folders.workspace
        if workspace is None or not self.config[CoreConfig.LOG_FILES]:
            return None
        return Path(workspace) / LOGS_FOLDER

    def descriptors(
        self, hosted: Sequence[RpcServiceDescriptor], stop: Callable[[], Any], *, asyncio: bool = False
    ) -> list[RpcServiceDescriptor]:
        """The descriptors of the built-in services for one server (an object serves one server only).

        :param hosted: the server's other services (they get log files when enabled).
        :param stop: shuts the server down with its grace (may return an awaitable on an asyncio server).
        :param asyncio: for an ``AsyncRpcServer`` (listeners then hold no thread).
        """
        if self._hosted:
            raise ValueError("a BuiltinServices object serves one server only")
        self._hosted = True
        folder = self.log_folder
        names = ["info", *BUILTIN_STUBS, *(d.name for d in hosted)]
        log_files = LogFiles(folder, names) if folder is not None else None
        events = AsyncEventsManager(self.events) if asyncio else EventsManager(self.events)
        managers = {
            "server": ServerManager(stop),
            "config": ConfigManager(self.config),
            "logger": LoggerManager(log_files, self._logger_changed),
            "events": events,
        }
        return [
            RpcServiceDescriptor(
                grpc_helper,
                name,
                _API[name],
                managers[name],
                _REGISTER[name],
                stub,
                access=ACCESS[name],
            )
            for name, (stub, _version) in BUILTIN_STUBS.items()
        ]


_API: dict[str, Any] = {
    "server": server_pb2.ServerApiVersion,
    "config": config_pb2.ConfigApiVersion,
    "logger": logger_pb2.LoggerApiVersion,
    "events": events_pb2.EventsApiVersion,
}
_REGISTER: dict[str, Callable[[Any, Any], None]] = {
    "server": server_pb2_grpc.add_ServerServiceServicer_to_server,
    "config": config_pb2_grpc.add_ConfigServiceServicer_to_server,
    "logger": logger_pb2_grpc.add_LoggerServiceServicer_to_server,
    "events": events_pb2_grpc.add_EventsServiceServicer_to_server,
}


def resolve(services: BuiltinServices | bool) -> BuiltinServices | None:
    """The ``services`` argument of a server: True for default ones, False for none."""
    if services is True:
        return BuiltinServices()
    if services is False:
        return None
    if not isinstance(services, BuiltinServices):
        raise TypeError(f"services must be a BuiltinServices or a bool, not {type(services).__name__}")
    return services
