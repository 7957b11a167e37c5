"""Two-stage stop on SIGINT/SIGTERM, for both servers: the first signal asks for a graceful shutdown, a second
one (while shutting down) exits the process at once."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

_log = logging.getLogger("grpc_helper.server")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TwoStageStop:
    """Calls ``request_stop()`` on the first signal and ``os._exit(128 + signum)`` on the next one."""

    def __init__(self, request_stop: Callable[[], None]) -> None:
        self._request_stop = request_stop
        self.requested = False

    def on_signal(self, signum: int) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        _log.info("signal %d: shutting down (again to exit at once)", signum)
        self._request_stop()
