"""The controller's ``status`` JSON, built from the scheduler's parts (lock held by the caller)."""

from __future__ import annotations

from typing import Any

from grpc_helper.grid._admission import Admission
from grpc_helper.grid._delivery import Delivery
from grpc_helper.grid._dispatch import Dispatcher
from grpc_helper.grid.model import Key


def grid_status(
    dispatch: Dispatcher, delivery: Delivery, admission: Admission, counters: dict[str, int], closed: bool, now: float
) -> dict[str, Any]:
    running: dict[Key, int] = {}
    for worker in dispatch.workers.values():
        running[worker.key] = running.get(worker.key, 0) + len(worker.leases)
    keys = sorted(set(dispatch.queues) | set(running) | {k for k, ws in dispatch.by_key.items() if ws})
    return {
        "workers": [
            {
                "id": w.id,
                "description": w.description,
                "service_id": w.key[0],
                "service_version": w.key[1],
                "state": w.state.value,
                "owner": w.owner,
                "concurrency": w.concurrency,
                "window": w.window,
                "in_flight": len(w.leases),
                "running": dispatch.started_count(w),
                "jobs_done": w.jobs_done,
                "jobs_failed": w.jobs_failed,
                "heartbeats": w.heartbeats,
                "pid": w.pid,
                "host": w.host,
                "peer": w.peer,
                "connected_s": round(now - w.since, 3),
                "last_seen_s": round(now - w.last_seen, 3),
            }
            for w in dispatch.workers.values()
        ],
        "queues": [
            {
                "service_id": k[0],
                "service_version": k[1],
                "depth": dispatch.depth(k),
                "running": running.get(k, 0),
                "workers": len(dispatch.by_key.get(k, {})),
            }
            for k in keys
        ],
        "counters": dict(counters),
        "held": {"jobs": admission.jobs, "bytes": admission.bytes, "retained": len(delivery.retained)},
        "sessions": {
            "count": len(delivery.sessions),
            "streaming": sum(1 for s in delivery.sessions.values() if s.stream),
            "identities": len(admission.by_identity),
        },
        "closed": closed,
    }
