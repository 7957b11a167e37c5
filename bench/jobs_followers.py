"""Job runner followers benchmark: many live log followers, and another client's unary calls meanwhile.

P8: 20 identities each follow their own live job with 100 streams (2,000 followers in total, every job
    printing a line every 0.5 s, so followers are woken all the time); meanwhile another identity's unary
    ``Status`` calls (in a process of its own): p50/p99 latency (goal p99 < 100 ms) against the same calls with no follower (the
    baseline, measured first), server RSS and thread count before and with the followers, and one identity
    past its stream quota (default ``CallLimits``: 128 streams) refused with RESOURCE_EXHAUSTED.

The server is ``python -m grpc_helper.jobs serve`` with default settings, in its own process, mTLS on
loopback. Usage: python bench/jobs_followers.py [--identities 20] [--per-identity 100] [--calls 500]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grpc_helper import RpcClient, RpcException
from grpc_helper import certs as tls
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc

STUBS = {"jobs": (jobs_pb2_grpc.JobsStub, jobs_pb2.JOBS_API_CURRENT)}
TICKER = "import sys, time\nprint('ready', flush=True)\nwhile True:\n    time.sleep({tick}); print('tick', flush=True)\n"


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "grpc_helper.jobs", "serve", "--endpoint", "127.0.0.1:0", "--tls-dir",
         str(tmp / "tls"), "--state-dir", str(tmp / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    match = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
    if not match:
        server.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return server, int(match.group(1))


def probe(port: int, tls_dir: Path, job_id: str, calls: int) -> None:
    """In its own process (another client): ``calls`` Status calls one after the other, latencies as JSON."""
    client = RpcClient("127.0.0.1", port, STUBS, timeout=30, credentials=tls.channel_credentials(tls_dir, "probe"))
    client.jobs.Status(jobs_pb2.JobRequest(job_id=job_id))  # connected
    times = []
    deadline = time.monotonic() + 120
    for _ in range(calls):
        t0 = time.perf_counter()
        client.jobs.Status(jobs_pb2.JobRequest(job_id=job_id))
        times.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    client.close()
    print(json.dumps(times))


def unary_latencies(port: int, tls_dir: Path, job_id: str, calls: int) -> list[float]:
    done = subprocess.run(
        [sys.executable, __file__, "--probe", f"{port},{tls_dir},{job_id},{calls}"], capture_output=True, check=True,
        timeout=300,
    )
    times: list[float] = json.loads(done.stdout)
    return times


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def summary(times: list[float]) -> str:
    return f"p50 {statistics.median(times) * 1000:.2f} ms, p99 {p99(times) * 1000:.2f} ms ({len(times)} calls)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=20)
    parser.add_argument("--per-identity", type=int, default=100)
    parser.add_argument("--calls", type=int, default=500, help="unary calls measured per phase (default 500)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the slowest calls")
    parser.add_argument("--tick", type=float, default=0.5, help="seconds between the jobs' lines (default 0.5)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        port, tls_dir, job_id, calls = args.probe.split(",")
        probe(int(port), Path(tls_dir), job_id, int(calls))
        return
    names = [f"user{i:02d}" for i in range(args.identities)]
    with tempfile.TemporaryDirectory(prefix="jobs-followers-bench-") as d:
        tmp = Path(d)
        tls.init(tmp / "tls", [*names, "probe"])
        server, port = start_server(tmp)
        clients: dict[str, RpcClient] = {}
        streams: list[Any] = []
        try:
            def client(name: str) -> RpcClient:
                if name not in clients:
                    clients[name] = RpcClient("127.0.0.1", port, STUBS, timeout=30,
                                              credentials=tls.channel_credentials(tmp / "tls", name))
                return clients[name]

            python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable  # any user runs it
            probe_job = client("probe").jobs.Run(jobs_pb2.RunRequest(command=["sleep", "3600"])).job_id
            jobs = {n: client(n).jobs.Run(jobs_pb2.RunRequest(command=[python, "-c", TICKER.format(tick=args.tick)])).job_id
                    for n in names}
            idle = proc_status(server.pid)
            baseline = unary_latencies(port, tmp / "tls", probe_job, args.calls)
            t0 = time.perf_counter()
            for n in names:
                for _ in range(args.per_identity):
                    stream = client(n).jobs.Logs(jobs_pb2.LogsRequest(job_id=jobs[n], follow=True), timeout=None)
                    streams.append(stream)
            for stream in streams:
                assert next(stream).data.startswith(b"ready")  # attached: the server holds it
            attached = time.perf_counter() - t0
            cpu0, self0, t0 = cpu_seconds(server.pid), cpu_seconds(os.getpid()), time.perf_counter()
            loaded = unary_latencies(port, tmp / "tls", probe_job, args.calls)
            wall = time.perf_counter() - t0
            server_cpu = (cpu_seconds(server.pid) - cpu0) / wall
            holder_cpu = (cpu_seconds(os.getpid()) - self0) / wall
            held = proc_status(server.pid)
            if args.verbose:
                print("    slowest calls (ms):", [round(t * 1000, 1) for t in sorted(loaded)[-10:]])
            refused = "no"
            extra = [client(names[0]).jobs.Logs(jobs_pb2.LogsRequest(job_id=jobs[names[0]], follow=True), timeout=10)
                     for _ in range(200 - args.per_identity)]
            try:
                for stream in extra:
                    next(stream)
            except RpcException as e:
                refused = f"yes, {e.status.name} after {len(streams) // len(names)}+ streams: {e.message}"
            for stream in extra:
                stream.close()
            print(f"P8: {len(streams)} followers ({args.per_identity} per identity x {len(names)}) attached in "
                  f"{attached:.1f}s")
            print(f"    other client's unary Status: no followers {summary(baseline)}; with them {summary(loaded)} "
                  f"(goal p99 < 100 ms); p99 ratio {p99(loaded) / p99(baseline):.2f}")
            print(f"    CPU meanwhile: server {server_cpu:.0%} of a core, this process (holding the followers) "
                  f"{holder_cpu:.0%}; load average {os.getloadavg()[0]:.1f}")
            print(f"    server RSS {idle['VmRSS'] / 1024:.0f} MB idle (20 jobs running) -> {held['VmRSS'] / 1024:.0f} MB "
                  f"with the followers ({(held['VmRSS'] - idle['VmRSS']) / len(streams):.1f} KB each), "
                  f"peak {held['VmHWM'] / 1024:.0f} MB; threads {idle['Threads']} -> {held['Threads']}")
            print(f"    one identity past its stream quota refused: {refused}")
        finally:
            for stream in streams:
                stream.close()
            for c in clients.values():
                c.close()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
