"""Helpers shared by the job runner tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc


def _python_for_jobs() -> str:
    """An interpreter that jobs (run as ``nobody`` when the tests run as root) can execute."""
    exe = Path(sys.executable).resolve()
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in [exe, *exe.parents]):
        return sys.executable
    return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable


PY = _python_for_jobs()
STUBS = {"jobs": (jobs_pb2_grpc.JobsStub, jobs_pb2.JOBS_API_CURRENT)}


def run(jobs: Any, *argv: str, **fields: Any) -> jobs_pb2.JobStatus:
    return jobs.Run(jobs_pb2.RunRequest(command=list(argv), **fields))


def wait_done(jobs: Any, job_id: str, timeout: float = 20.0) -> jobs_pb2.JobStatus:
    """Follow the logs to the end (the stream ends when the job ends), then return the final status."""
    for _ in jobs.Logs(jobs_pb2.LogsRequest(job_id=job_id, follow=True), timeout=timeout):
        pass
    return jobs.Status(jobs_pb2.JobRequest(job_id=job_id))


def collect(jobs: Any, job_id: str, follow: bool = True, timeout: float = 20.0) -> dict[int, bytes]:
    out = {jobs_pb2.STDOUT: b"", jobs_pb2.STDERR: b""}
    for chunk in jobs.Logs(jobs_pb2.LogsRequest(job_id=job_id, follow=follow), timeout=timeout):
        out[chunk.stream] += chunk.data
    return out


def status(jobs: Any, job_id: str) -> jobs_pb2.JobStatus:
    return jobs.Status(jobs_pb2.JobRequest(job_id=job_id))


def first_line(jobs: Any, job_id: str, timeout: float = 20.0) -> bytes:
    """Block until the job printed its first stdout line (a readiness signal), return it."""
    data = b""
    for chunk in jobs.Logs(jobs_pb2.LogsRequest(job_id=job_id, follow=True), timeout=timeout):
        if chunk.stream == jobs_pb2.STDOUT:
            data += chunk.data
            if b"\n" in data:
                return data.split(b"\n", 1)[0]
    raise AssertionError(f"job {job_id} ended before printing a line")
