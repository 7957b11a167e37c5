"""Grid throughput vs ``ProcessPoolExecutor(2)`` (one ``submit()`` per job, same payloads), defaults first.

Grid: a ``grid serve`` process (plaintext on loopback, default sqlite backend), 2 worker processes (concurrency 1, default adaptive
prefetch unless ``--prefetch``), the ``GridClient`` here (``map``). Prints jobs/s and the ratio to the pool for
tiny jobs (32-byte payload, echo; goal >= 5) and 10 ms jobs (goal >= 0.98). With ``--peers``, the same tiny
and 10 ms jobs on Dask distributed (2 worker processes) and Celery (2 prefork workers, Redis broker on
127.0.0.1:6379), installed in a virtualenv of their own (never project dependencies).

The grid runs on its default backend (sqlite, durable; a fresh state directory per run). The backend row runs
the same tiny jobs on the sqlite and the memory backend, alternately (``--rounds`` each, best kept): the ratio
is what durability costs (goal >= 0.7). The redis row (Redis on 127.0.0.1:6379, started if absent, database
14 with a key prefix of its own, deleted afterwards) runs them on one grid server with 2 workers and on two
grid servers sharing the Redis queue with 2 workers each and one client per server, alternately: jobs/s and
the ratio of two servers to one. With ``--peers`` Celery runs on the same Redis.

    .venv/bin/python bench/grid_throughput.py [--tiny 20000] [--slow 400] [--prefetch N] [--rounds 2] [--peers]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from grpc_helper.grid import GridClient
from grpc_helper.grid.handlers import echo, sleep_echo

HERE = Path(__file__).parent
PEER_VENV = Path(os.environ.get("GRID_BENCH_PEERS", Path.home() / ".cache" / "grpc-helper" / "grid-bench-peers"))
PEER_PACKAGES = ["dask[distributed]", "celery[redis]"]


@contextmanager
def grid(
    workers: int, handler: str, prefetch: int | None, backend: str = "sqlite", servers: int = 1
) -> Iterator[list[str]]:
    """Grid servers (sharing ``backend`` when it is a redis URL) and ``workers`` spread over them: their endpoints."""
    py = sys.executable
    states = [tempfile.TemporaryDirectory(prefix="grid-bench-") for _ in range(servers)]
    hosts = [
        subprocess.Popen(
            [py, "-m", "grpc_helper.grid", "serve", "--insecure", "--port", "0", "--backend", backend,
             "--state-dir", state.name],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        for state in states
    ]
    procs: list[subprocess.Popen[str]] = []
    try:
        endpoints = []
        for host in hosts:
            assert host.stdout is not None
            endpoints.append(host.stdout.readline().split()[3])  # "grid serving on HOST:PORT (plaintext)"
        extra = [] if prefetch is None else ["--prefetch", str(prefetch)]
        for i in range(workers):
            procs.append(subprocess.Popen(
                [py, "-m", "grpc_helper.grid", "worker", "--insecure", "--endpoint", endpoints[i % servers],
                 "--service", "bench", "--version", "1", "--description", f"bench-{i}", *extra, handler],
                stderr=subprocess.DEVNULL,
            ))
        yield endpoints
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        for host in hosts:
            host.terminate()
        for host in hosts:
            host.wait(10)
        for state in states:
            state.cleanup()


def run_grid(endpoints: list[str], payloads: list[bytes]) -> float:
    """One client per endpoint (threads), each mapping its share of the payloads: total jobs/s."""
    clients = [GridClient(endpoint, timeout=30) for endpoint in endpoints]
    shares = [payloads[i :: len(clients)] for i in range(len(clients))]
    try:
        for client in clients:
            list(client.map("bench", "1", payloads[:200], timeout=60))  # warm-up: workers registered, streams open
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as threads:
            start = time.perf_counter()
            results = list(threads.map(lambda cs: list(cs[0].map("bench", "1", cs[1], timeout=600)),
                                       zip(clients, shares, strict=True)))
            elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            client.close()
    assert results == shares
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


def measure(name: str, handler: str, fn: Callable[[bytes], bytes], count: int, prefetch: int | None, goal: float) -> float:
    payloads = [os.urandom(16).hex().encode() for _ in range(count)]
    pool_rate = run_pool(fn, payloads)
    with grid(2, handler, prefetch) as endpoints:
        grid_rate = run_grid(endpoints, payloads)
    ratio = grid_rate / pool_rate
    setting = "default prefetch" if prefetch is None else f"prefetch {prefetch}"
    print(f"{name:<12} jobs={count:<6} grid={grid_rate:9.0f} jobs/s  pool={pool_rate:9.0f} jobs/s  "
          f"ratio={ratio:.2f} (goal >= {goal}; {setting})", flush=True)
    return ratio


def measure_backends(count: int, rounds: int) -> float:
    """Tiny jobs on the sqlite backend vs the memory backend, alternately; the ratio of the best rates."""
    payloads = [os.urandom(16).hex().encode() for _ in range(count)]
    best = {"sqlite": 0.0, "memory": 0.0}
    for _ in range(rounds):
        for backend in best:
            with grid(2, "grpc_helper.grid.handlers:echo", None, backend) as endpoints:
                best[backend] = max(best[backend], run_grid(endpoints, payloads))
    ratio = best["sqlite"] / best["memory"]
    print(f"{'backends':<12} jobs={count:<6} sqlite={best['sqlite']:9.0f} jobs/s  memory={best['memory']:9.0f} jobs/s  "
          f"ratio={ratio:.2f} (goal >= 0.7; tiny echo jobs, default prefetch, best of {rounds})", flush=True)
    return ratio


def measure_redis(count: int, rounds: int) -> float:
    """Tiny jobs on the redis backend: one server and 2 workers vs two servers and 4 workers, alternately."""
    import redis as redis_py

    payloads = [os.urandom(16).hex().encode() for _ in range(count)]
    prefix = f"grid-bench-{os.getpid()}:"
    url = f"redis://127.0.0.1:6379/14?prefix={prefix}"
    best = {1: 0.0, 2: 0.0}
    try:
        for _ in range(rounds):
            for servers in best:
                with grid(2 * servers, "grpc_helper.grid.handlers:echo", None, url, servers) as endpoints:
                    best[servers] = max(best[servers], run_grid(endpoints, payloads))
    finally:
        client = redis_py.Redis(db=14)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    ratio = best[2] / best[1]
    print(f"{'redis':<12} jobs={count:<6} 1 server={best[1]:9.0f} jobs/s  2 servers={best[2]:9.0f} jobs/s  "
          f"ratio={ratio:.2f} (tiny echo jobs, 2 workers per server, one client per server, default prefetch, "
          f"best of {rounds})", flush=True)
    return ratio


# ---- peers (their own virtualenv) ----


def peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing {' '.join(PEER_PACKAGES)} in {PEER_VENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def redis_up() -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", 6379)) == 0


@contextmanager
def redis() -> Iterator[None]:
    proc = None
    if not redis_up():
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no Redis on 127.0.0.1:6379 and no redis-server to start")
        proc = subprocess.Popen([binary, "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL)
        for _ in range(100):
            if redis_up():
                break
            time.sleep(0.05)
    try:
        yield
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


def run_peer(python: Path, peer: str, kind: str, count: int) -> float:
    out = subprocess.run([str(python), str(HERE / "grid_peers.py"), peer, kind, str(count)], capture_output=True,
                         text=True, timeout=900, check=True)
    return float(out.stdout.split("rate=")[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=int, default=20000, help="tiny jobs")
    parser.add_argument("--slow", type=int, default=400, help="10 ms jobs")
    parser.add_argument("--prefetch", type=int, default=None, help="also measure tiny jobs with this fixed prefetch")
    parser.add_argument("--rounds", type=int, default=2, help="runs per backend of the backend row")
    parser.add_argument("--peers", action="store_true", help="also run Dask distributed and Celery (own venv)")
    parser.add_argument("--peer-tiny", type=int, default=3000, help="tiny jobs for the peers")
    args = parser.parse_args()
    print(f"grid throughput on {os.cpu_count()} CPU(s); defaults first", flush=True)
    tiny = measure("tiny (echo)", "grpc_helper.grid.handlers:echo", echo, args.tiny, None, 5)
    slow = measure("10 ms jobs", "grpc_helper.grid.handlers:sleep_echo", sleep_echo, args.slow, None, 0.98)
    if args.prefetch is not None:
        measure("tiny (echo)", "grpc_helper.grid.handlers:echo", echo, args.tiny, args.prefetch, 5)
    durable = measure_backends(args.tiny, args.rounds)
    with redis():
        shared = measure_redis(args.tiny, args.rounds)
    print(f"grid tiny={tiny:.2f} slow={slow:.2f} sqlite/memory={durable:.2f} redis 2/1 servers={shared:.2f}", flush=True)
    if args.peers:
        python = peer_python()
        with redis():
            for peer in ("dask", "celery"):
                rate = run_peer(python, peer, "tiny", args.peer_tiny)
                slow_rate = run_peer(python, peer, "slow", args.slow)
                print(f"peer {peer:<7} tiny={rate:9.0f} jobs/s  10 ms={slow_rate:6.0f} jobs/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
