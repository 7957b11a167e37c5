"""Job runner log streaming benchmark.

P3: throughput of streaming 1 GiB of a job's output to one reader (``logs -f`` from the start, while the
    job writes it) divided by reading the same log file with ``cat`` into a pipe (goal >= 0.5); also the
    finished log replayed, and the job writing with no reader (what the live stream cannot beat). Rounds run
    each measurement side by side; ratios are taken per round, then the median.
P4: peak RSS of the server process while 100 readers follow one live job (goal < 150 MB), all readers
    receiving byte-identical output.

The server is a separate ``python -m grpc_helper.jobs serve`` process over mTLS on loopback; peak RSS is its
kernel high-water mark (VmHWM). Usage: ``python bench/jobs_logs.py [--gib 1] [--readers 100] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from grpc_helper import RpcClient
from grpc_helper import certs as tls
from grpc_helper.jobs import logs
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc

STUBS = {"jobs": (jobs_pb2_grpc.JobsStub, jobs_pb2.JOBS_API_CURRENT)}


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(tmp: Path, ref: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """A jobs server (of the checkout ``ref`` when given: before/after comparisons)."""
    tls.init(tmp / "tls", ["bench"])
    server = subprocess.Popen(
        [sys.executable, "-m", "grpc_helper.jobs", "serve", "--endpoint", "127.0.0.1:0", "--tls-dir",
         str(tmp / "tls"), "--state-dir", str(tmp / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": ref} if ref else None,
    )
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    match = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
    if not match:
        server.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return server, int(match.group(1))


def client(tmp: Path, port: int) -> RpcClient:
    return RpcClient("127.0.0.1", port, STUBS, credentials=tls.channel_credentials(tmp / "tls", "bench"), timeout=10)


def read_stream(c: RpcClient, job_id: str) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for chunk in c.jobs.Logs(jobs_pb2.LogsRequest(job_id=job_id, follow=True), timeout=None):
        if chunk.stream == jobs_pb2.STDOUT:
            h.update(chunk.data)
            n += len(chunk.data)
    return n, h.hexdigest()


def cat_to_pipe(log: Path) -> float:
    """Seconds for ``cat`` to send the file into a pipe read by this process (the bytes reach a Python reader, as
    with the stream)."""
    t0 = time.perf_counter()
    cat = subprocess.Popen(["cat", str(log)], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    while cat.stdout.read(1 << 20):
        pass
    cat.wait()
    return time.perf_counter() - t0


def p3_round(c: RpcClient, tmp: Path, size: int) -> dict[str, float]:
    """One round: the job writing alone (no reader), the job streamed live, the finished log replayed, cat."""
    command = ["head", "-c", str(size), "/dev/zero"]
    t0 = time.perf_counter()
    st = c.jobs.Run(jobs_pb2.RunRequest(command=command))
    while c.jobs.Status(jobs_pb2.JobRequest(job_id=st.job_id)).state == jobs_pb2.JOB_RUNNING:
        time.sleep(0.005)
    write = time.perf_counter() - t0
    # Each measurement writes a fresh GiB: logs are deleted once used (on this VM, a page cache growing by GiBs
    # makes writing new pages several times slower, whoever writes them).
    logs.remove(tmp / "state" / "logs", st.job_id)
    t0 = time.perf_counter()
    st = c.jobs.Run(jobs_pb2.RunRequest(command=command))
    n = messages = 0
    for chunk in c.jobs.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=None):
        n += len(chunk.data)
        messages += 1
    live = time.perf_counter() - t0
    assert n == size, (n, size)
    t0 = time.perf_counter()
    n = sum(len(chunk.data) for chunk in c.jobs.Logs(jobs_pb2.LogsRequest(job_id=st.job_id), timeout=None))
    replay = time.perf_counter() - t0
    assert n == size
    cat = cat_to_pipe(tmp / "state" / "logs" / f"{st.job_id}.stdout")
    logs.remove(tmp / "state" / "logs", st.job_id)
    return {"write": write, "live": live, "replay": replay, "cat": cat, "messages": messages}


def p3(servers: dict[str, tuple[Path, int]], size: int, rounds: int) -> None:
    """P3 on each server (``{label: (tmp, port)}``), round after round."""
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
    clients = {label: client(tmp, port) for label, (tmp, port) in servers.items()}
    try:
        for i in range(rounds):
            for label, (tmp, _port) in servers.items():
                samples[label].append(p3_round(clients[label], tmp, size))
                r = samples[label][-1]
                print(f"    round {i + 1} {label}: live {r['cat'] / r['live']:.2f} of cat, replay "
                      f"{r['cat'] / r['replay']:.2f}; MiB/s: live {size / r['live'] / (1 << 20):.0f} "
                      f"({r['messages']:.0f} messages), replay {size / r['replay'] / (1 << 20):.0f}, job alone "
                      f"{size / r['write'] / (1 << 20):.0f}, cat {size / r['cat'] / (1 << 20):.0f}", flush=True)
    finally:
        for c in clients.values():
            c.close()
    mib = size / (1 << 20)
    for label, rows in samples.items():

        def median(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        def ratio(num: str, den: str, rows: list[dict[str, float]] = rows) -> float:  # per round, then the median
            return statistics.median(r[num] / r[den] for r in rows)

        name = f" ({label})" if len(servers) > 1 else ""
        print(f"P3{name}: {mib:.0f} MiB, median of {rounds} rounds: live {mib / median('live'):.0f} MiB/s "
              f"({median('messages'):.0f} messages), replay {mib / median('replay'):.0f} MiB/s, the job writing with "
              f"no reader {mib / median('write'):.0f} MiB/s, cat -> pipe read by Python {mib / median('cat'):.0f} MiB/s")
        print(f"P3{name} = live stream / cat-to-pipe = {ratio('cat', 'live'):.2f} (goal >= 0.5); replay / cat-to-pipe"
              f" = {ratio('cat', 'replay'):.2f}; live / the job alone = {ratio('write', 'live'):.2f}")


def p4(tmp: Path, port: int, server_pid: int, readers: int) -> None:
    # A live job: 64 KiB of varying bytes every 10 ms for ~3 s (12 MiB), readers attach before it writes.
    code = (
        "import os, sys, time\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
        "for i in range(192):\n"
        "    sys.stdout.buffer.write(bytes([i % 256]) * 65536); sys.stdout.flush(); time.sleep(0.01)\n"
    )
    shared = Path(tempfile.mkdtemp(prefix="jobs-bench-go-"))  # jobs run as another user (nobody) when root
    shared.chmod(0o755)
    go = shared / "go"
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    clients = [client(tmp, port) for _ in range(max(1, readers // 25))]  # <= 25 streams per connection
    try:
        st = clients[0].jobs.Run(jobs_pb2.RunRequest(command=[python, "-c", code, str(go)]))
        before = vm_rss_mb(server_pid)
        results: list[tuple[int, str]] = []
        lock = threading.Lock()

        def reader(c: RpcClient) -> None:
            r = read_stream(c, st.job_id)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=reader, args=(clients[i % len(clients)],)) for i in range(readers)]
        for t in threads:
            t.start()
        go.touch()
        for t in threads:
            t.join(300)
        peak = vm_hwm_mb(server_pid)
    finally:
        for c in clients:
            c.close()
        shutil.rmtree(shared, ignore_errors=True)
    expected = hashlib.sha256((tmp / "state" / "logs" / f"{st.job_id}.stdout").read_bytes()).hexdigest()
    identical = len(results) == readers and all(r == (192 * 65536, expected) for r in results)
    print(f"P4: {readers} concurrent readers of one live job: server RSS {before:.0f} MB before, "
          f"peak (VmHWM) {peak:.0f} MB (goal < 150 MB); all readers byte-identical: {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="P3 output size in GiB (default 1)")
    parser.add_argument("--readers", type=int, default=100, help="P4 readers (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="P3 rounds, each side by side (default 3)")
    parser.add_argument("--tmp", default=None, help="where the servers' state (and the jobs' logs) go, e.g. "
                        "/dev/shm to take the disk out (default: the system's temporary directory)")
    parser.add_argument("--ref", default="", help="P3 also on a server of this checkout (with generated code), "
                        "alternately: before/after")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobs-bench-", dir=args.tmp) as d:
        tmp = Path(d)
        server, port = start_server(tmp)
        others: list[subprocess.Popen[bytes]] = []
        try:
            p4(tmp, port, server.pid, args.readers)  # first: the peak RSS must not include P3's
            servers = {"this checkout": (tmp, port)}
            if args.ref:
                (tmp / "ref").mkdir()
                ref, ref_port = start_server(tmp / "ref", os.path.abspath(args.ref))
                others.append(ref)
                servers["ref"] = (tmp / "ref", ref_port)
            p3(servers, int(args.gib * (1 << 30)), args.rounds)
        finally:
            for s in [server, *others]:
                s.send_signal(signal.SIGTERM)
                s.wait(60)


if __name__ == "__main__":
    main()
