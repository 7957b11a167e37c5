"""The prefetch a worker asks for: fixed, or adapted to its handler's measured speed."""

from __future__ import annotations

import math
import time

#: Adaptive prefetch: jobs buffered per runner to cover this much work (seconds), within the bounds below.
_BUFFERED_WORK = 0.05
_JOB_OVERHEAD = 50e-6  # per-job cost outside the handler (messages, threads), seconds
_PREFETCH_MIN, _PREFETCH_MAX, _PREFETCH_START = 1, 512, 64


class Prefetch:
    """The prefetch a worker asks for: fixed, or adapted to the handler's measured duration."""

    def __init__(self, fixed: int | None, concurrency: int) -> None:
        self.adaptive = fixed is None
        self.concurrency = concurrency
        self.value = _PREFETCH_START * concurrency if fixed is None else fixed
        self._avg: float | None = None
        self._told = self.value
        self._told_at = 0.0

    def record(self, seconds: float) -> int | None:
        """Record a handler's duration; returns a new prefetch to announce, if it changed enough."""
        if not self.adaptive:
            return None
        self._avg = seconds if self._avg is None else 0.9 * self._avg + 0.1 * seconds
        wanted = math.ceil(self.concurrency * _BUFFERED_WORK / (self._avg + _JOB_OVERHEAD))
        wanted = max(_PREFETCH_MIN, min(_PREFETCH_MAX * self.concurrency, wanted))
        now = time.monotonic()
        if abs(wanted - self._told) * 4 > self._told and now - self._told_at > 0.1:
            self.value = self._told = wanted
            self._told_at = now
            return wanted
        return None
