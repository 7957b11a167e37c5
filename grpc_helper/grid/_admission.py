"""Admission: what each session, identity and the whole grid may keep held (jobs and bytes)."""

from __future__ import annotations

from collections.abc import Sequence

from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import GridLimitError, GridParamError, JobRecord, Session


class Admission:
    """Counters of held jobs (queued, running, or completed and not acknowledged) and the quotas on them."""

    def __init__(self, limits: GridLimits) -> None:
        self.limits = limits
        self.jobs = 0
        self.bytes = 0
        self.by_identity: dict[str, int] = {}

    def check_payloads(self, payloads: Sequence[bytes]) -> int:
        """Validate one submit's payloads (no state needed); returns their total size."""
        limits = self.limits
        if not payloads:
            raise GridParamError("no payload to submit")
        if len(payloads) > limits.max_batch:
            raise GridLimitError(f"batch of {len(payloads)} jobs exceeds max_batch={limits.max_batch}")
        size = 0
        for payload in payloads:
            if len(payload) > limits.max_payload_bytes:
                raise GridLimitError(
                    f"payload of {len(payload)} bytes exceeds max_payload_bytes={limits.max_payload_bytes}"
                )
            size += len(payload)
        return size

    def admit(self, session: Session, count: int, size: int) -> None:
        """Raise ``GridLimitError`` naming the first quota that ``count`` more jobs of ``size`` bytes exceed."""
        limits = self.limits
        hint = " (collect results, then retry)"
        if len(session.jobs) + count > limits.max_session_jobs:
            raise GridLimitError(
                f"session quota: {len(session.jobs)} jobs held, {count} more exceed max_session_jobs="
                f"{limits.max_session_jobs}{hint}"
            )
        if session.bytes + size > limits.max_session_bytes:
            raise GridLimitError(
                f"session quota: {session.bytes} bytes held, {size} more exceed max_session_bytes="
                f"{limits.max_session_bytes}{hint}"
            )
        if session.owner:
            held = self.by_identity.get(session.owner, 0)
            if held + count > limits.max_identity_jobs:
                raise GridLimitError(
                    f"identity quota: {session.owner!r} holds {held} jobs, {count} more exceed max_identity_jobs="
                    f"{limits.max_identity_jobs}{hint}"
                )
        if self.jobs + count > limits.max_jobs:
            raise GridLimitError(f"grid is full: {self.jobs} jobs held, {count} more exceed max_jobs={limits.max_jobs}")
        if self.bytes + size > limits.max_bytes:
            raise GridLimitError(f"grid is full: {self.bytes} bytes held, {size} more exceed max_bytes={limits.max_bytes}")

    def hold(self, session: Session, job: JobRecord) -> None:
        session.jobs.add(job.id)
        session.bytes += job.size
        self.jobs += 1
        self.bytes += job.size
        if session.owner:
            self.by_identity[session.owner] = self.by_identity.get(session.owner, 0) + 1

    def resize(self, session: Session, job: JobRecord, size: int) -> None:
        """The job's payload is replaced by its result."""
        delta = size - job.size
        job.size = size
        session.bytes += delta
        self.bytes += delta

    def release(self, session: Session, job: JobRecord) -> None:
        if job.id not in session.jobs:
            return
        session.jobs.discard(job.id)
        session.bytes -= job.size
        self.jobs -= 1
        self.bytes -= job.size
        if session.owner:
            left = self.by_identity.get(session.owner, 0) - 1
            if left > 0:
                self.by_identity[session.owner] = left
            else:
                self.by_identity.pop(session.owner, None)
