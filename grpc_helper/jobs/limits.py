"""``JobsLimits``: how much one server, and each client, may run and keep (validated, immutable)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

DEFAULT_MAX_RUNNING = 1000
DEFAULT_MAX_RUNNING_PER_OWNER = 100
DEFAULT_MAX_LOG_BYTES = 1 << 30
DEFAULT_MIN_FREE_BYTES = 64 << 20
DEFAULT_KEEP_AGE = 30 * 86400.0

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class JobsLimits:
    """Per-server and per-client limits of the job runner; 0 (or None) disables one.

    :param max_running: running jobs on the server at once (past it, ``Run`` answers RESOURCE_EXHAUSTED).
    :param max_running_per_owner: running jobs of one client (certificate name) at once (RESOURCE_EXHAUSTED).
    :param max_log_bytes: output kept per job, stdout and stderr together; a job writing more is killed and
        reported ``KILLED`` with ``stopped_by=STOP_LOG_LIMIT`` (its log keeps the first ``max_log_bytes``).
    :param min_free_bytes: ``Run`` answers RESOURCE_EXHAUSTED when the state directory's file system has
        less free space than this.
    :param keep_age: finished jobs (record and logs) are purged this many seconds after their end (None: kept).
    :param keep_count: only the most recent ``keep_count`` finished jobs are kept (None: no count limit).
    """

    max_running: int = DEFAULT_MAX_RUNNING
    max_running_per_owner: int = DEFAULT_MAX_RUNNING_PER_OWNER
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    keep_age: float | None = DEFAULT_KEEP_AGE
    keep_count: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_running", "max_running_per_owner", "max_log_bytes", "min_free_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: no limit), not {value!r}")
        if self.keep_age is not None and not (math.isfinite(self.keep_age) and self.keep_age > 0):
            raise ValueError(f"keep_age must be a positive number of seconds or None, not {self.keep_age!r}")
        if self.keep_count is not None and (not isinstance(self.keep_count, int) or self.keep_count < 0):
            raise ValueError(f"keep_count must be an integer >= 0 or None, not {self.keep_count!r}")

    @property
    def purges(self) -> bool:
        return self.keep_age is not None or self.keep_count is not None


def parse_size(text: str) -> int:
    """``512M``, ``1.5G``, ``4096`` -> bytes (binary multiples); ValueError otherwise."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text[:40]!r} (e.g. 4096, 64M, 1G)")
    scale = 1024 ** " kmgt".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * scale)


def parse_keep(text: str) -> tuple[float | None, int | None]:
    """``30d``/``12h``/``90m``/``3600s``/``2w`` -> (age in seconds, None); ``10000`` -> (None, count);
    ``forever`` -> (None, None). ValueError otherwise."""
    text = text.strip()
    if text.lower() == "forever":
        return None, None
    if text.isdigit():
        return None, int(text)
    m = _AGE_RE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"invalid --keep {text[:40]!r}: an age (30d, 12h, 90m, 3600s, 2w), a count (10000) or forever")
    return float(m.group(1)) * _AGE_UNITS[m.group(2).lower()], None


def size_text(n: int) -> str:
    """``1 GiB``, ``64 MiB``, ``3 KiB``, ``1000 bytes``: exact binary multiples only."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
