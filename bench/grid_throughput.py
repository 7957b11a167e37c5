"""P5: grid throughput vs ``ProcessPoolExecutor(2)`` (one ``submit()`` per job, same payloads).

Grid: a server process, 2 worker processes (concurrency 1), the client here. Prints jobs/s and the ratio for
tiny jobs (32-byte payload, echo; goal >= 0.5) and for 10 ms jobs (goal >= 0.9).

    .venv/bin/python bench/grid_throughput.py [--tiny 20000] [--slow 400] [--prefetch 256]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from grpc_helper.grid import GridClient, GridController
from grpc_helper.grid.handlers import echo, sleep_echo


@contextmanager
def grid(workers: int, handler: str, prefetch: int) -> Iterator[str]:
    py = sys.executable
    server = subprocess.Popen(
        [py, "-m", "grpc_helper.grid", "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().split()[-1]  # "grid serving on HOST:PORT"
        for i in range(workers):
            procs.append(
                subprocess.Popen(
                    [py, "-m", "grpc_helper.grid", "worker", "--endpoint", endpoint, "--service", "bench",
                     "--version", "1", "--prefetch", str(prefetch), "--description", f"bench-{i}", handler],
                    stderr=subprocess.DEVNULL,
                )
            )
        with GridController(endpoint, timeout=10) as ctl:
            for _ in range(200):  # bounded wait for the registrations
                if len(ctl.status()["workers"]) == workers:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("workers did not register")
        yield endpoint
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        server.terminate()
        server.wait(10)


def run_grid(endpoint: str, payloads: list[bytes]) -> float:
    with GridClient(endpoint) as client:
        list(client.map("bench", "1", payloads[:100]))  # warm-up: channel, stream, imports
        start = time.perf_counter()
        results = list(client.map("bench", "1", payloads))
        elapsed = time.perf_counter() - start
    assert results == payloads
    return len(payloads) / elapsed


def run_pool(fn: Callable[[bytes], bytes], payloads: list[bytes]) -> float:
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        list(pool.map(fn, payloads[:100]))  # warm-up: start the processes
        start = time.perf_counter()
        futures = [pool.submit(fn, p) for p in payloads]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - start
    assert results == payloads
    return len(payloads) / elapsed


def measure(name: str, handler: str, fn: Callable[[bytes], bytes], count: int, prefetch: int, goal: float) -> float:
    payloads = [os.urandom(16).hex().encode() for _ in range(count)]  # 32 bytes each
    pool_rate = run_pool(fn, payloads)
    with grid(2, handler, prefetch) as endpoint:
        grid_rate = run_grid(endpoint, payloads)
    ratio = grid_rate / pool_rate
    print(
        f"{name:<12} jobs={count:<6} grid={grid_rate:9.0f} jobs/s  pool={pool_rate:9.0f} jobs/s  "
        f"ratio={ratio:.2f} (goal >= {goal})",
        flush=True,
    )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=int, default=20000, help="tiny jobs")
    parser.add_argument("--slow", type=int, default=400, help="10 ms jobs")
    parser.add_argument("--prefetch", type=int, default=256, help="jobs prefetched per worker (tiny jobs)")
    args = parser.parse_args()
    print(f"P5 grid throughput on {os.cpu_count()} CPU(s)")
    tiny = measure("tiny (echo)", "grpc_helper.grid.handlers:echo", echo, args.tiny, args.prefetch, 0.5)
    slow = measure("10 ms jobs", "grpc_helper.grid.handlers:sleep_echo", sleep_echo, args.slow, 2, 0.9)
    print(f"P5 tiny={tiny:.2f} slow={slow:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
