"""Job runner List benchmark: latency per page with 10k and 1M records, against the bare SQLite query.

P7: a ``List`` page (100 jobs, mTLS, the server in its own process: ``python -m grpc_helper.jobs serve`` with
    default settings) with 10,000 and 1,000,000 records in the store (goal < 0.2 s per page), and its ratio
    to the same page read straight from the store (``JobStore.page`` in this process: the baseline), rounds
    alternating between the two.

The store is filled directly (finished jobs of 20 owners, ended in the last day, 50 running ones) for speed.
Pages measured: the first page (oldest first), the newest page (``ps``'s default), a page deep in the table
through a page token, an admin's page of one owner, a client's own page, and the running jobs only.

Usage: python bench/jobs_list.py [--sizes 10000,1000000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from grpc_helper import RpcClient
from grpc_helper import certs as tls
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc
from grpc_helper.jobs.requests import page as page_of
from grpc_helper.jobs.store import JobRecord, JobStore, LimitsSpec, State

STUBS = {"jobs": (jobs_pb2_grpc.JobsStub, jobs_pb2.JOBS_API_CURRENT)}
OWNERS = [f"user{i:02d}" for i in range(20)]


def fill(state_dir: Path, count: int) -> list[str]:
    """``count`` records (50 of them RUNNING, the others EXITED), ids in creation order; returns the ids."""
    (state_dir / "logs").mkdir(parents=True, mode=0o700)
    store = JobStore(state_dir / "jobs.sqlite3")
    now = time.time()
    base_ms = int((now - 86400) * 1000)
    all_ids: list[str] = []
    batch: list[JobRecord] = []
    running = set(range(count - 50, count))
    for i in range(count):
        job_id = _id_at(base_ms + i * 86_000_000 // count)
        start = now - 86400 + i * 86400 / count
        state = State.RUNNING if i in running else State.EXITED
        batch.append(JobRecord(
            job_id, OWNERS[i % len(OWNERS)], ("sh", "-c", f"echo job {i}"), "/", state=state, pid=0,
            start_time=start, end_time=0.0 if state == State.RUNNING else start + 1, limits=LimitsSpec(),
            boot_id="bench-other-boot",  # recovery marks them LOST without touching any process
        ))
        all_ids.append(job_id)
        if len(batch) == 10_000:
            store.put_many(batch)
            batch = []
    if batch:
        store.put_many(batch)
    store.close()
    return all_ids


def _id_at(ms: int) -> str:
    """A UUIDv7 with a given millisecond timestamp (random bits from os.urandom)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def start_server(tmp: Path, state_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "grpc_helper.jobs", "serve", "--endpoint", "127.0.0.1:0", "--tls-dir",
         str(tmp / "tls"), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    match = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
    if not match:
        server.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return server, int(match.group(1))


def measure(size: int, rounds: int, tmp: Path) -> None:
    state_dir = tmp / f"state-{size}"
    t0 = time.perf_counter()
    all_ids = fill(state_dir, size)
    filled = time.perf_counter() - t0
    server, port = start_server(tmp, state_dir)
    store = JobStore(state_dir / "jobs.sqlite3")  # the baseline reads the same file (WAL: concurrent readers)
    deep = all_ids[size // 2]
    cases: dict[str, tuple[str, jobs_pb2.ListRequest]] = {
        "first page (oldest)": ("root", jobs_pb2.ListRequest()),
        "newest page (ps)": ("root", jobs_pb2.ListRequest(newest_first=True)),
        "deep page (token)": ("root", jobs_pb2.ListRequest(page_token=deep)),
        "admin, one owner": ("root", jobs_pb2.ListRequest(owner="user07", newest_first=True)),
        "client's own page": ("user07", jobs_pb2.ListRequest(newest_first=True)),
        "lost jobs only": ("root", jobs_pb2.ListRequest(states=[jobs_pb2.JOB_LOST])),
    }
    clients = {name: RpcClient("127.0.0.1", port, STUBS, timeout=30,
                               credentials=tls.channel_credentials(tmp / "tls", name)) for name in ("root", "user07")}
    try:
        print(f"P7 with {size:,} records (filled in {filled:.1f}s), page of 100, median / p99 over {rounds} rounds:")
        for label, (who, request) in cases.items():
            grpc_times: list[float] = []
            bare_times: list[float] = []
            call: Callable[[jobs_pb2.ListRequest], jobs_pb2.ListResponse] = clients[who].jobs.List
            bare_page = page_of(request, who, who == "root")
            n = len(call(request).jobs)  # warm-up, and the page is not empty
            for _ in range(rounds):
                t0 = time.perf_counter()
                call(request)
                grpc_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                store.page(bare_page)
                bare_times.append(time.perf_counter() - t0)
            g, b = statistics.median(grpc_times), statistics.median(bare_times)
            p99 = sorted(grpc_times)[max(0, int(len(grpc_times) * 0.99) - 1)]
            print(f"  {label:<20} {n:>4} jobs: List {g * 1000:7.2f} ms (p99 {p99 * 1000:7.2f} ms) | "
                  f"bare store {b * 1000:6.2f} ms | ratio {g / b:5.1f} | goal < 200 ms: {'ok' if p99 < 0.2 else 'MISSED'}")
    finally:
        for c in clients.values():
            c.close()
        store.close()
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,1000000", help="record counts (default 10000,1000000)")
    parser.add_argument("--rounds", type=int, default=20, help="calls per page kind (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobs-list-bench-") as d:
        tmp = Path(d)
        tls.init(tmp / "tls", ["user07"], ["root"])
        for size in (int(s) for s in args.sizes.split(",")):
            measure(size, args.rounds, tmp)


if __name__ == "__main__":
    main()
