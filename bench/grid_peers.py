"""Peers of the grid benchmark: Dask distributed and Celery, run in their own virtualenv.

    PEER_VENV/bin/python bench/grid_peers.py dask|celery tiny|slow COUNT

Prints one line: ``<peer> <kind> jobs=<n> rate=<jobs/s>``. Dask: a ``LocalCluster`` of 2 worker processes (1 thread
each), ``client.map`` then ``gather``. Celery: 2 prefork worker processes, Redis broker and result backend on
127.0.0.1:6379, ``delay()`` per job then ``ResultSet.join_native()`` (JSON: payloads as text). bench/grid_throughput.py runs this.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

BROKER = "redis://127.0.0.1:6379/0"
BACKEND = "redis://127.0.0.1:6379/1"


def echo(data: bytes) -> bytes:
    return data


def sleep_echo(data: bytes) -> bytes:
    time.sleep(0.01)
    return data


try:  # the Celery app (its worker imports this module by name)
    from celery import Celery

    app = Celery("grid_peers", broker=BROKER, backend=BACKEND)
    # JSON (Celery's default; pickle is refused for a root worker): payloads travel as text.
    app.conf.update(worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)

    @app.task(name="echo")
    def celery_echo(data: str) -> str:
        return data

    @app.task(name="sleep_echo")
    def celery_sleep_echo(data: str) -> str:
        time.sleep(0.01)
        return data

except ImportError:  # pragma: no cover - only the peer venv has Celery
    app = None


def run_dask(fn, payloads: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(fn, payloads[:100], pure=False))  # warm-up
        start = time.perf_counter()
        results = client.gather(client.map(fn, payloads, pure=False))
        elapsed = time.perf_counter() - start
    assert results == payloads
    return len(payloads) / elapsed


def run_celery(task, payloads: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    from celery.result import ResultSet

    here = os.path.dirname(os.path.abspath(__file__))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "grid_peers", "worker", "-c", "2", "-P", "prefork", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):  # bounded wait for the worker
            if app.control.ping(timeout=0.2):
                break
        else:
            raise RuntimeError("celery worker did not start")
        texts = [p.decode() for p in payloads]
        ResultSet([task.delay(t) for t in texts[:100]]).join_native()  # warm-up
        start = time.perf_counter()
        results = [r.encode() for r in ResultSet([task.delay(t) for t in texts]).join_native()]
        elapsed = time.perf_counter() - start
    finally:
        worker.terminate()
        worker.wait(30)
    assert results == payloads
    return len(payloads) / elapsed


def main() -> int:
    peer, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    payloads = [os.urandom(16).hex().encode() for _ in range(count)]
    if peer == "dask":
        rate = run_dask(echo if kind == "tiny" else sleep_echo, payloads)
    else:
        rate = run_celery(celery_echo if kind == "tiny" else celery_sleep_echo, payloads)
    print(f"{peer} {kind} jobs={count} rate={rate:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
