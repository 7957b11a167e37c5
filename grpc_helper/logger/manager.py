"""``LoggerManager``: the logger service (levels read and changed remotely), and per-service log files."""

from __future__ import annotations

import logging
import logging.handlers
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from grpc_helper.api import logger_pb2, logger_pb2_grpc
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException
from grpc_helper.manager import RpcManager

ROOT = "root"
LEVELS = ("NOTSET", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Size of a log file before it rolls over, and how many rolled files are kept.
FILE_BYTES = 10 * 1024 * 1024
FILE_BACKUPS = 3
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def service_logger(service: str) -> logging.Logger:
    """The logger of a hosted service: ``grpc_helper.<service>`` (its manager's ``logger``)."""
    return logging.getLogger(f"grpc_helper.{service}")


class LogFiles:
    """One rolling file per service, ``<folder>/<service>.log``, fed by ``grpc_helper.<service>``."""

    def __init__(self, folder: Path, services: Iterable[str]) -> None:
        self.folder = folder
        self._services = list(services)
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for service in self._services:
            handler = logging.handlers.RotatingFileHandler(
                self.folder / f"{service}.log", maxBytes=FILE_BYTES, backupCount=FILE_BACKUPS, encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter(FILE_FORMAT))
            logger = service_logger(service)
            logger.addHandler(handler)
            self._handlers.append((logger, handler))

    def close(self) -> None:
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
            handler.close()
        self._handlers.clear()


class LoggerManager(logger_pb2_grpc.LoggerServiceServicer, RpcManager):
    """Lists loggers and their levels; sets and resets levels (its methods never block: asyncio servers too).

    :param log_files: per-service rolling log files to open at load and close at shutdown, if any.
    :param on_change: called with ``(logger name, new level name)`` after each remote change.
    """

    def __init__(self, log_files: LogFiles | None = None, on_change: Callable[[str, str], None] | None = None) -> None:
        super().__init__()
        self._log_files = log_files
        self._on_change = on_change
        self._original: dict[str, int] = {}
        self._guard = threading.Lock()

    def load(self) -> None:
        if self._log_files is not None:
            self._log_files.open()

    def shutdown(self) -> None:
        if self._log_files is not None:
            self._log_files.close()

    @staticmethod
    def _loggers() -> dict[str, logging.Logger]:
        found = {n: lg for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
        return {ROOT: logging.getLogger(), **dict(sorted(found.items()))}

    def _find(self, names: Iterable[str]) -> dict[str, logging.Logger]:
        loggers = self._loggers()
        names = list(names)
        if not names:
            return loggers
        unknown = [n for n in names if (n or ROOT) not in loggers]
        if unknown:
            raise RpcException(f"unknown logger(s): {', '.join(repr(n[:64]) for n in unknown[:10])}", ResultCode.ERROR_ITEM_UNKNOWN)
        return {(n or ROOT): loggers[n or ROOT] for n in names}

    def _describe(self, name: str, logger: logging.Logger) -> logger_pb2.LoggerLevel:
        return logger_pb2.LoggerLevel(
            name=name,
            level=logging.getLevelName(logger.level),
            effective_level=logging.getLevelName(logger.getEffectiveLevel()),
            changed=name in self._original,
        )

    def get(self, request: logger_pb2.LoggerFilter, context: Any = None) -> logger_pb2.LoggerLevels:
        return logger_pb2.LoggerLevels(items=[self._describe(n, lg) for n, lg in self._find(request.names).items()])

    def set(self, request: logger_pb2.LoggerLevels, context: Any = None) -> logger_pb2.LoggerLevels:
        loggers = self._find(i.name for i in request.items)
        levels = {}
        for item in request.items:
            level = item.level.upper()
            if level not in LEVELS:
                raise RpcException(
                    f"invalid level {item.level[:32]!r} for logger {item.name or ROOT}: expected one of {', '.join(LEVELS)}",
                    ResultCode.ERROR_PARAM_INVALID,
                )
            levels[item.name or ROOT] = logging.getLevelName(level)
        with self._guard:
            for name, level in levels.items():
                self._original.setdefault(name, loggers[name].level)
                loggers[name].setLevel(level)
        self.logger.info("levels set: %s", ", ".join(f"{n}={logging.getLevelName(v)}" for n, v in levels.items()))
        self._tell(loggers[n] for n in levels)
        return logger_pb2.LoggerLevels(items=[self._describe(n, loggers[n]) for n in levels])

    def _tell(self, loggers: Iterable[logging.Logger]) -> None:
        if self._on_change is not None:
            for logger in loggers:
                self._on_change(logger.name, logging.getLevelName(logger.level))

    def reset(self, request: logger_pb2.LoggerFilter, context: Any = None) -> logger_pb2.LoggerLevels:
        loggers = self._find(request.names) if request.names else self._loggers()
        with self._guard:
            names = [n for n in (request.names or self._original) if (n or ROOT) in self._original]
            restored = {}
            for name in names:
                key = name or ROOT
                loggers[key].setLevel(self._original.pop(key))
                restored[key] = loggers[key]
        self._tell(restored.values())
        return logger_pb2.LoggerLevels(items=[self._describe(n, lg) for n, lg in restored.items()])
