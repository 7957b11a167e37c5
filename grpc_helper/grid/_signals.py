"""A worker's Ctrl+C / SIGTERM: the first one drains, the second leaves at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_log = logging.getLogger("grpc_helper.grid.worker")


def install_stop_signals(stop: Callable[[], None], abort: Callable[[], None]) -> Callable[[], None] | None:
    """Route SIGINT/SIGTERM to ``stop`` (first) and ``abort`` (then); returns the restoring function (None
    outside the main thread, where signals can't be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    count = [0]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        count[0] += 1
        if count[0] == 1:
            _log.info("%s: finishing current jobs (again to exit at once)", signal.Signals(signum).name)
            stop()
        else:
            abort()

    previous: dict[int, Any] = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
