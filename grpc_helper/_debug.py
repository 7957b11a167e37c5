"""Debug dumps: live thread stacks and pending calls, on demand or on SIGUSR2.

Every server records its calls in a ``CallRegistry``. ``dump()`` writes ``RpcServerDump-YYYYMMDDhhmmss.txt``;
``Usr2Dumper`` writes one on each SIGUSR2 for every live server (one handler per process, installed from the
main thread only, chaining the handler it replaced and restoring it when the last server leaves).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from grpc_helper.metadata import CLIENT_NAME_KEY


class _Context(Protocol):
    def invocation_metadata(self) -> Any: ...
    def peer(self) -> str: ...


@dataclass(frozen=True)
class PendingCall:
    """A call being served: what, for whom, for how long."""

    method: str
    client: str
    peer: str
    elapsed: float


class CallRegistry:
    """Calls in flight on one server (cheap to update: one dict store and one delete per call)."""

    def __init__(self) -> None:
        self._calls: dict[int, tuple[str, _Context, float]] = {}

    def begin(self, method: str, context: _Context) -> int:
        key = id(context)
        self._calls[key] = (method, context, time.monotonic())
        return key

    def end(self, key: int) -> None:
        self._calls.pop(key, None)

    def pending(self) -> list[PendingCall]:
        """Snapshot of the calls in flight, oldest first."""
        now = time.monotonic()
        out = []
        for method, context, start in sorted(self._calls.copy().values(), key=lambda c: c[2]):
            client = next((str(v) for k, v in context.invocation_metadata() or () if k == CLIENT_NAME_KEY), "?")
            out.append(PendingCall(method, client, context.peer(), now - start))
        return out


def _format_threads() -> list[str]:
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        lines.append(f"Thread {names.get(ident, '?')} (id {ident}):")
        lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
        lines.append("")
    return lines


def dump(folder: str | Path, registries: Iterable[tuple[str, CallRegistry]]) -> Path:
    """Write every live thread's stack and every pending call to ``folder/RpcServerDump-<timestamp>.txt``."""
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    path = Path(folder) / f"RpcServerDump-{stamp}.txt"
    lines = [f"RPC server dump {datetime.now().isoformat()}", "", "== Threads ==", *_format_threads(), "== Pending RPCs =="]
    for server, registry in registries:
        calls = registry.pending()
        lines.append(f"{server}: {len(calls)} pending")
        lines.extend(f"  {c.method} client={c.client} peer={c.peer} elapsed={c.elapsed:.3f}s" for c in calls)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Append: two dumps in the same second land in the same file rather than one hiding the other.
    with path.open("a") as out:
        out.write("\n".join(lines) + "\n")
    return path


_Handler = Callable[[int, FrameType | None], Any] | int | None


class Usr2Dumper:
    """The process-wide SIGUSR2 handler shared by all servers."""

    _lock = threading.Lock()
    _servers: dict[int, tuple[str, Path, CallRegistry]] = {}
    _previous: _Handler = None
    _installed = False

    @classmethod
    def register(cls, key: int, name: str, folder: Path, registry: CallRegistry) -> bool:
        """Add a server; installs the handler if needed. Returns False off the main thread (no handler then)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        with cls._lock:
            cls._servers[key] = (name, folder, registry)
            if not cls._installed:
                cls._previous = signal.signal(signal.SIGUSR2, cls._on_signal)
                cls._installed = True
        return True

    @classmethod
    def unregister(cls, key: int) -> None:
        """Remove a server; the last one out restores the previous handler (from the main thread only)."""
        with cls._lock:
            cls._servers.pop(key, None)
            if cls._servers or not cls._installed or threading.current_thread() is not threading.main_thread():
                return
            if signal.getsignal(signal.SIGUSR2) == cls._on_signal:
                signal.signal(signal.SIGUSR2, cls._previous if cls._previous is not None else signal.SIG_DFL)
            cls._installed = False

    @classmethod
    def _on_signal(cls, signum: int, frame: FrameType | None) -> None:
        servers = list(cls._servers.values())
        for folder in {f for _, f, _ in servers}:
            dump(folder, [(n, r) for n, f, r in servers if f == folder])
        if callable(cls._previous):
            cls._previous(signum, frame)
