"""At start-up: jobs still recorded RUNNING belong to a server that died; kill what is left of them, mark them LOST."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import psutil

from grpc_helper.jobs.cgroups import CgroupSupport
from grpc_helper.jobs.process import signal_group
from grpc_helper.jobs.store import JobRecord, JobStore, State, StopReason


def recover(
    store: JobStore, save: Callable[[JobRecord], None], cgroups: CgroupSupport, boot_id: str, logger: logging.Logger
) -> int:
    """Kill the leftovers of jobs recorded RUNNING (same boot only: after a reboot pids and cgroups are someone
    else's) and ``save`` them LOST. Only safe while holding the state directory's lock. Returns their count."""
    lost = store.running()
    for rec in lost:
        victims: set[int] = set()
        if rec.boot_id == boot_id:
            cg = cgroups.open(rec.cgroup) if rec.cgroup else None
            victims = _group_leftovers(rec.pid, rec.start_time) | (cg.pids() if cg else set())
            if rec.pid > 0 and victims:
                signal_group(rec.pid, signal.SIGKILL)
            if cg is not None:
                cg.kill_all()
                cg.remove()
        save(
            rec.update(
                state=State.LOST, stopped_by=StopReason.SERVER, end_time=time.time(),
                error=f"the server stopped while the job was running ({len(victims)} process(es) killed at restart)",
            )
        )
        logger.warning("job %s (pid %d) marked LOST, %d process(es) killed", rec.job_id, rec.pid, len(victims))
    return len(lost)


def _group_leftovers(pgid: int, started: float) -> set[int]:
    """Processes of group ``pgid`` created since ``started`` (what is left of an earlier run's job)."""
    victims: set[int] = set()
    if pgid <= 0:
        return victims
    for p in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["create_time"] >= started - 1.0:
                victims.add(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return victims
