"""``Config``: the values of a server's configuration items, from layered defaults and remote changes."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grpc_helper._limits import CallLimits
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.config.items import ConfigItem, Kind, items_of
from grpc_helper.errors import RpcException

T = TypeVar("T")

_log = logging.getLogger("grpc_helper.config")

CONFIG_FILE = "config.json"

CODE, SYSTEM, USER, ENV, COMMAND_LINE, REMOTE = "code", "system", "user", "env", "command line", "remote"


class ConfigError(ValueError):
    """A configuration that cannot be used (bad default, unreadable file, unknown item): says which and why."""


@dataclass(frozen=True)
class Folders:
    """Where a server finds its configuration and keeps its state.

    :param system: folder of the system-wide ``config.json`` (defaults for every user).
    :param user: folder of the user's ``config.json`` (defaults for this user).
    :param workspace: the server's own folder: values changed remotely (``config.json``), log files (``logs/``).
    """

    system: Path | None = None
    user: Path | None = None
    workspace: Path | None = None


class CoreConfig:
    """Settings of grpc-helper itself, present in every ``Config`` (static: fixed at start)."""

    WORKERS = ConfigItem("rpc-workers", "Threads serving calls in an RpcServer (each open stream holds one)", "64", Kind.POSITIVE_INT)
    SHUTDOWN_GRACE = ConfigItem("rpc-shutdown-grace", "Seconds in-flight calls get when the server stops", "5", Kind.SECONDS)
    CLIENT_TIMEOUT = ConfigItem("rpc-client-timeout", "Seconds clients keep retrying an unreachable server", "60", Kind.POSITIVE_FLOAT)
    MAX_CALLS = ConfigItem(
        "rpc-max-calls", "Calls one caller may have in flight (empty: half the workers, 256 on asyncio)", "", Kind.POSITIVE_INT,
        can_be_empty=True,
    )
    MAX_STREAMS = ConfigItem(
        "rpc-max-streams", "Streams one caller may have open (empty: a quarter of the workers, 128 on asyncio)", "",
        Kind.POSITIVE_INT, can_be_empty=True,
    )
    SEND_TIMEOUT = ConfigItem(
        "rpc-send-timeout", "Seconds a stream may wait for its reader before it is cut", "30", Kind.POSITIVE_FLOAT
    )
    DUMP_FOLDER = ConfigItem("rpc-dump-folder", "Folder of the debug dumps (SIGUSR2)", "/tmp", Kind.STRING)
    LOG_FILES = ConfigItem("rpc-log-files", "Write each service's log to logs/<service>.log in the workspace", "false", Kind.BOOL)
    EVENTS_WINDOW = ConfigItem("rpc-events-window", "Events retained for listeners that resume", "10000", Kind.POSITIVE_INT)
    EVENTS_KEEPALIVE = ConfigItem(
        "rpc-events-keepalive", "Seconds of silence before a listener gets a keepalive", "10", Kind.POSITIVE_FLOAT
    )

    @staticmethod
    def limits(config: Config, async_server: bool = False) -> CallLimits:
        """The per-caller quotas these items describe (empty items: the server's defaults)."""
        default = CallLimits() if async_server else CallLimits.for_threads(config[CoreConfig.WORKERS])
        return CallLimits(
            max_calls=config[CoreConfig.MAX_CALLS] or default.max_calls,
            max_streams=config[CoreConfig.MAX_STREAMS] or default.max_streams,
            send_timeout=config[CoreConfig.SEND_TIMEOUT],
        )


def _file_layer(folder: Path | None, origin: str) -> dict[str, str]:
    if folder is None:
        return {}
    path = Path(folder) / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the {origin} configuration {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"invalid JSON in the {origin} configuration {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the {origin} configuration {path} must be a JSON object of item names to values")
    return {str(k): _text(v, f"{path}: {k}") for k, v in data.items()}


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"{where}: expected a string, number or boolean, not {type(value).__name__}")


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``{"name": "value"}`` from ``-c name=value`` arguments; raises ``ConfigError`` for one without ``=``."""
    values = {}
    for override in overrides:
        name, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"expected name=value, not {override!r}")
        values[name.strip()] = value
    return values


class Config:
    """The configuration of a server: every item's value, from these layers (the last one wins):

    1. the code default (``ConfigItem(default=...)``);
    2. ``config.json`` in ``folders.system``, then in ``folders.user`` (JSON object: item name -> value);
    3. the environment (``MY_ITEM`` for ``my-item``), when ``environ`` is given (e.g. ``os.environ``);
    4. ``overrides``: ``"name=value"`` texts (the ``-c`` options of ``RpcCliParser``).

    That is an item's *default*. A *user* item can then be changed remotely (config service): the value
    is persisted in ``folders.workspace/config.json`` and survives restarts, until reset to its default.

    Every value is checked by its item's ``Kind``: a bad one raises ``ConfigError`` naming the item, the
    layer and the reason, so a server with a bad default does not start.

    :param holders: classes holding ``ConfigItem`` attributes (``CoreConfig`` is always included).

    Example::

        config = Config([MyConfig], folders=Folders(workspace=Path("state")), environ=os.environ)
        color = config[MyConfig.COLOR]
    """

    def __init__(
        self,
        holders: Iterable[Any] = (),
        *,
        folders: Folders | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Iterable[str] | Mapping[str, str] = (),
    ) -> None:
        self.folders = folders or Folders()
        self._items: dict[str, ConfigItem[Any]] = {}
        for item in items_of([CoreConfig, *holders]):
            known = self._items.get(item.name)
            if known is not None and known is not item:
                raise ConfigError(f"config item {item.name} is declared twice")
            self._items[item.name] = item
        self._lock = threading.RLock()
        self._listeners: list[Callable[[ConfigItem[Any], str, str], None]] = []
        #: name -> (text, origin) of each item's default; name -> (text, value, origin) in force
        self._defaults: dict[str, tuple[str, str]] = {}
        self._values: dict[str, tuple[str, Any, str]] = {}
        layers = [
            (SYSTEM, _file_layer(self.folders.system, SYSTEM)),
            (USER, _file_layer(self.folders.user, USER)),
            (ENV, {n: environ[i.env_name] for n, i in self._items.items() if environ and i.env_name in environ}),
            (COMMAND_LINE, dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)),
        ]
        for item in self._items.values():
            self._adopt(item, item.default, CODE)
        for origin, values in layers:
            for name, text in values.items():
                found = self._items.get(name)
                if found is None:
                    names = ", ".join(sorted(self._items))
                    raise ConfigError(f"unknown config item {name[:64]!r} in the {origin} layer (known: {names})")
                self._adopt(found, text, origin)
        self._load_persisted()

    def _adopt(self, item: ConfigItem[Any], text: str, origin: str) -> None:
        try:
            value = item.parse(text)
        except ValueError as exc:
            what = f"env {item.env_name}" if origin == ENV else origin
            raise ConfigError(f"bad default for config item {exc} (from {what})") from None
        self._defaults[item.name] = (text, origin)
        self._values[item.name] = (text, value, origin)

    @property
    def _persisted_path(self) -> Path | None:
        return None if self.folders.workspace is None else Path(self.folders.workspace) / CONFIG_FILE

    def _load_persisted(self) -> None:
        try:
            persisted = _file_layer(self.folders.workspace, "workspace")
        except ConfigError as exc:
            _log.warning("ignoring values changed remotely: %s", exc)
            return
        for name, text in persisted.items():
            item = self._items.get(name)
            if item is None or not item.user:
                _log.warning("ignoring the persisted value of %s: not a user config item", name)
                continue
            try:
                self._values[name] = (text, item.parse(text), REMOTE)
            except ValueError as exc:
                _log.warning("ignoring the persisted value of %s", exc)

    def _commit(self, values: Mapping[str, tuple[str, Any, str]]) -> None:
        """Apply new values once persisted (under the lock): a value that cannot be saved is not applied."""
        merged = {**self._values, **values}
        path = self._persisted_path
        if path is not None:
            data = {n: t for n, (t, _v, o) in merged.items() if o == REMOTE}
            tmp = path.with_suffix(".tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, path)
            except OSError as exc:
                why = f"cannot save the configuration in {path}: {exc.strerror}"
                raise RpcException(why, ResultCode.ERROR_STATE_UNEXPECTED) from None
        self._values = merged

    def __getitem__(self, item: ConfigItem[T]) -> T:
        """The value in force of ``item`` (converted by its kind)."""
        value: T = self._values[self._known(item.name).name][1]
        return value

    def _known(self, name: str) -> ConfigItem[Any]:
        item = self._items.get(name)
        if item is None:
            raise RpcException(f"unknown config item: {name[:64]!r}", ResultCode.ERROR_ITEM_UNKNOWN)
        return item

    def items(self) -> list[ConfigItem[Any]]:
        """Every item, in declaration order (grpc-helper's own first)."""
        return list(self._items.values())

    def item(self, name: str) -> ConfigItem[Any]:
        """The item named ``name``; ``RpcException(ERROR_ITEM_UNKNOWN)`` if there is none."""
        return self._known(name)

    def text(self, name: str) -> str:
        """The value in force of item ``name``, as text."""
        return self._values[self._known(name).name][0]

    def origin(self, name: str) -> str:
        """Where the value of item ``name`` comes from: code, system, user, env, command line or remote."""
        return self._values[self._known(name).name][2]

    def default(self, name: str) -> str:
        """The default text of item ``name`` (what ``reset`` returns to)."""
        return self._defaults[self._known(name).name][0]

    def set(self, values: Mapping[str, str]) -> list[ConfigItem[Any]]:
        """Change user items, all or none; the new values are persisted and listeners told.

        Raises ``RpcException``: ERROR_ITEM_UNKNOWN for an unknown name, ERROR_PARAM_INVALID for a static item
        or an invalid value (the message names the item and gives the reason)."""
        parsed: dict[str, tuple[str, Any]] = {}
        for name, text in values.items():
            item = self._known(name)
            if not item.user:
                raise RpcException(f"{name}: static config item, fixed at start", ResultCode.ERROR_PARAM_INVALID)
            try:
                parsed[name] = (text, item.parse(text))
            except ValueError as exc:
                raise RpcException(str(exc), ResultCode.ERROR_PARAM_INVALID) from None
        with self._lock:
            self._commit({name: (text, value, REMOTE) for name, (text, value) in parsed.items()})
        changed = [self._items[n] for n in parsed]
        self._tell(changed)
        return changed

    def reset(self, names: Iterable[str] = ()) -> list[ConfigItem[Any]]:
        """Return user items to their default (every changed one when ``names`` is empty); persisted, told."""
        names = list(names)
        for name in names:
            if not self._known(name).user:
                raise RpcException(f"{name}: static config item, fixed at start", ResultCode.ERROR_PARAM_INVALID)
        with self._lock:
            if not names:
                names = [n for n, (_t, _v, o) in self._values.items() if o == REMOTE]
            defaults = {n: self._defaults[n] for n in names}
            self._commit({n: (text, self._items[n].parse(text), origin) for n, (text, origin) in defaults.items()})
        changed = [self._items[n] for n in names]
        self._tell(changed)
        return changed

    def subscribe(self, listener: Callable[[ConfigItem[Any], str, str], None]) -> None:
        """Call ``listener(item, text, origin)`` after each change of a user item."""
        self._listeners.append(listener)

    def _tell(self, changed: Iterable[ConfigItem[Any]]) -> None:
        for item in changed:
            text, _value, origin = self._values[item.name]
            for listener in self._listeners:
                try:
                    listener(item, text, origin)
                except Exception:
                    _log.exception("config listener failed for %s", item.name)
