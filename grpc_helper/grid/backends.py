"""Queue backends of the grid server: ``memory`` (nothing survives the process) or ``sqlite`` (durable).

    from grpc_helper.grid import descriptors
    from grpc_helper.grid.backends import open_backend
    descs = descriptors(backend=open_backend("sqlite", state_dir))
"""

from __future__ import annotations

from pathlib import Path

from grpc_helper.grid._backend import Backend, MemoryBackend
from grpc_helper.grid._sqlite import SqliteBackend, StateDirBusy, default_state_dir

#: Backend names accepted by ``open_backend`` (and ``grid serve --backend``).
BACKENDS = ("sqlite", "memory")

__all__ = ["BACKENDS", "Backend", "MemoryBackend", "SqliteBackend", "StateDirBusy", "default_state_dir", "open_backend"]


def open_backend(name: str, state_dir: Path | str | None = None) -> Backend:
    """A backend by name: ``memory``, or ``sqlite`` in ``state_dir`` (default: ``default_state_dir()``).

    Raises ``ValueError`` for an unknown name, ``StateDirBusy`` when another grid server holds the state directory.
    """
    if name == "memory":
        return MemoryBackend()
    if name == "sqlite":
        return SqliteBackend(default_state_dir() if state_dir is None else state_dir)
    raise ValueError(f"unknown grid backend {name[:40]!r} (expected one of: {', '.join(BACKENDS)})")
