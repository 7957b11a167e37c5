"""Grid limits and timings: one small immutable value object."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GridLimits:
    """Limits that bound the grid server's memory and define its reliability policy.

    max_jobs: jobs held by the server (queued + running + completed but not yet delivered); a submit past it
        fails with RESOURCE_EXHAUSTED.
    max_payload_bytes: largest job payload or result accepted.
    max_bytes: payload and undelivered result bytes held by the server; a submit past it fails likewise.
    max_batch: most jobs in one submit call.
    max_retained, max_retained_bytes: delivered results kept for ``get_result`` (oldest dropped first).
    max_retries: re-runs of a job whose handler raised before it completes with the error.
    max_requeues: times a job may be lost with its worker (death, disconnect, missed heartbeat) before it fails.
    heartbeat_interval: seconds between worker heartbeats; a worker silent for ``heartbeat_timeout`` is dropped.
    shutdown_delay: default delay of the controller's shutdown, so that its response is delivered first.
    stream_batch_bytes, stream_batch_count: soft caps of one streamed message (job batch or result batch).
    """

    max_jobs: int = 100_000
    max_payload_bytes: int = 1024 * 1024
    max_bytes: int = 256 * 1024 * 1024
    max_batch: int = 10_000
    max_retained: int = 10_000
    max_retained_bytes: int = 64 * 1024 * 1024
    max_retries: int = 2
    max_requeues: int = 20
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 6.0
    shutdown_delay: float = 0.5
    stream_batch_bytes: int = 2 * 1024 * 1024
    stream_batch_count: int = 2_000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0 and name not in ("max_retries", "shutdown_delay", "max_retained", "max_retained_bytes"):
                raise ValueError(f"GridLimits.{name} must be > 0 (got {value})")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("GridLimits.heartbeat_timeout must be greater than heartbeat_interval")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
