"""Queue backends of the grid server: ``memory`` (nothing survives the process), ``sqlite`` (durable, one
server) or ``redis://HOST:PORT/DB`` (a queue in Redis Streams shared by several grid servers).

    from grpc_helper.grid import descriptors
    from grpc_helper.grid.backends import open_backend
    descs = descriptors(backend=open_backend("sqlite", state_dir))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from grpc_helper.grid._backend import Backend, BackendUnavailable, MemoryBackend
from grpc_helper.grid._sqlite import SqliteBackend, default_state_dir
from grpc_helper.statedir import StateDirBusy

if TYPE_CHECKING:
    from grpc_helper.grid._redis import RedisBackend

#: Backend names accepted by ``open_backend`` (and ``grid serve --backend``), besides ``redis://`` URLs.
BACKENDS = ("sqlite", "memory")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "MemoryBackend",
    "RedisBackend",
    "SqliteBackend",
    "StateDirBusy",
    "default_state_dir",
    "open_backend",
]


def open_backend(name: str, state_dir: Path | str | None = None) -> Backend:
    """A backend by name: ``memory``, ``sqlite`` in ``state_dir`` (default: ``default_state_dir()``), or a
    ``redis://HOST:PORT/DB`` URL (``rediss://`` for TLS; ``?prefix=NAME`` to keep several grids in one database).

    Raises ``ValueError`` for an unknown name, ``StateDirBusy`` when another grid server holds the state directory,
    ``BackendUnavailable`` when Redis does not answer.
    """
    if name == "memory":
        return MemoryBackend()
    if name == "sqlite":
        return SqliteBackend(default_state_dir() if state_dir is None else state_dir)
    if name.startswith(("redis://", "rediss://", "unix://")):
        from grpc_helper.grid._redis import RedisBackend  # redis-py is an extra: imported when asked for

        return RedisBackend(name)
    raise ValueError(f"unknown grid backend {name[:40]!r} (expected one of: {', '.join(BACKENDS)}, or a redis:// URL)")


def __getattr__(name: str) -> object:
    if name == "RedisBackend":  # redis-py is an extra (``grpc-helper[redis]``): imported when asked for
        from grpc_helper.grid._redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
