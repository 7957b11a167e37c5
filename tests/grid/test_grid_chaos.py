"""Chaos: thousands of jobs while workers are SIGKILLed and restarted at random; every result arrives once."""

from __future__ import annotations

import collections
import random
import signal

from grpc_helper.grid import GridClient

from .conftest import WAIT, GridServer

JOBS = 3000
WORKERS = 3


def test_chaos_exactly_once(grid_server: GridServer, spawn_worker) -> None:
    rng = random.Random(4)
    workers = [spawn_worker("grid_handlers:tick", "chaos", "1") for _ in range(WORKERS)]
    seen: collections.Counter[int] = collections.Counter()
    with GridClient(grid_server.endpoint) as client:
        pairs = client._core.pairs  # count every result the stream hands over (white-box: the dedup layer)

        def counting(results):  # type: ignore[no-untyped-def]
            results = list(results)
            seen.update(r.job_id for r in results)
            return pairs(results)

        client._core.pairs = counting  # type: ignore[method-assign]
        payloads = [b"job-%05d" % i for i in range(JOBS)]
        handles = client.submit_batch("chaos", "1", payloads)
        kills = 0
        for mark in range(150, JOBS, 150):  # bounded: one kill per 150 delivered results
            grid_server.wait(lambda s, m=mark: s["counters"]["delivered"] >= m or s["counters"]["delivered"] >= JOBS)
            if grid_server.grid.status()["counters"]["delivered"] >= JOBS:
                break
            victim = workers.pop(rng.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait(WAIT)
            kills += 1
            workers.append(spawn_worker("grid_handlers:tick", "chaos", "1"))
        results = [h.result(WAIT) for h in handles]
    assert results == payloads
    assert kills >= 5
    assert set(seen) == {h.job_id for h in handles}
    assert max(seen.values()) == 1, [i for i, n in seen.items() if n > 1][:10]
    counters = grid_server.grid.status()["counters"]
    assert counters["submitted"] == counters["done"] == counters["delivered"] == JOBS
    assert counters["failed"] == 0
    # Some victims die before registering; the others lose their leased jobs, which ran elsewhere.
    assert 1 <= counters["workers_lost"] <= kills and counters["requeued"] >= 1
