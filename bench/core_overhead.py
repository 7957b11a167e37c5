"""Core overhead benchmark: grpc-helper servers against bare grpcio, same servicer, side by side.

Each server runs in its own process on 127.0.0.1; this process is the client (a plain grpcio stub sending
the same metadata to every server, so the version check runs on ours). Rounds alternate between servers
and the median of each is kept, so machine noise hits both sides alike.

    P1  sequential unary latency, RpcServer ÷ bare grpc.server            (goal <= 1.05)
    P2  throughput, 32 concurrent callers, RpcServer ÷ bare grpc.server   (goal >= 0.95)
    P2  the same for AsyncRpcServer ÷ bare grpc.aio server                (goal >= 0.95)
    P2  best of our servers ÷ best bare grpcio server                     (goal >= 0.95)
    C   server CPU time per sequential call, AsyncRpcServer ÷ bare grpc.aio (goal <= 1.02), and
        RpcServer ÷ bare grpc.server (for information); the difference is the work grpc-helper adds per call

CPU time is read from each server process (user + system), so it measures the work done for a call rather
than how long the call waited: it is much steadier than wall-clock figures on a busy machine.

The asyncio servers answer on their event loop: the bare one hosts an ``async def`` wrapper of the same
InfoManager (grpc.aio would run a plain ``def`` in a thread pool), ours calls it inline like its own.

Usage: python bench/core_overhead.py [--calls 2000] [--rounds 5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc.aio
import psutil

from grpc_helper.api import info_pb2, info_pb2_grpc
from grpc_helper.metadata import client_metadata

#: Server kinds: each starts a server on 127.0.0.1 and returns (port, the object keeping it alive).
SERVERS: dict[str, Callable[[], tuple[int, object]]] = {}


def server(name: str) -> Callable[[Callable[[], tuple[int, object]]], Callable[[], tuple[int, object]]]:
    def register(start: Callable[[], tuple[int, object]]) -> Callable[[], tuple[int, object]]:
        SERVERS[name] = start
        return start

    return register


@server("bare")
def _bare() -> tuple[int, object]:
    from grpc_helper.info import InfoManager, info_descriptor

    manager = InfoManager()
    manager.publish([info_descriptor(manager)])
    srv = grpc.server(ThreadPoolExecutor(64), options=[("grpc.so_reuseport", 0)])
    info_pb2_grpc.add_InfoServiceServicer_to_server(manager, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return port, srv


@server("ours")
def _ours() -> tuple[int, object]:
    from grpc_helper import RpcServer

    srv = RpcServer(0, [], host="127.0.0.1")
    return srv.port, srv


#: asyncio server kinds: each starts a server on the running loop and returns (port, an async stop()).
AIO_SERVERS: dict[str, Callable[[], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]]] = {}


async def _bare_aio() -> tuple[int, Callable[[], Awaitable[None]]]:
    from grpc_helper.info import InfoManager, info_descriptor

    manager = InfoManager()
    manager.publish([info_descriptor(manager)])

    class AsyncInfo(info_pb2_grpc.InfoServiceServicer):
        async def get(self, request: info_pb2.InfoFilter, context: object) -> info_pb2.MultiServiceInfo:
            return manager.get(request)

    srv = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    info_pb2_grpc.add_InfoServiceServicer_to_server(AsyncInfo(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    return port, lambda: srv.stop(None)


async def _ours_aio() -> tuple[int, Callable[[], Awaitable[None]]]:
    from grpc_helper import AsyncRpcServer

    srv = AsyncRpcServer(0, [], host="127.0.0.1")
    await srv.start()
    return srv.port, srv.shutdown


AIO_SERVERS.update({"bare-aio": _bare_aio, "ours-aio": _ours_aio})


async def serve_aio(name: str) -> None:
    port, stop = await AIO_SERVERS[name]()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await stop()


def serve(name: str) -> None:
    """Child process: start one server, print its port, serve until stdin closes."""
    if name in AIO_SERVERS:
        asyncio.run(serve_aio(name))
        return
    port, alive = SERVERS[name]()
    print(port, flush=True)
    sys.stdin.read()
    del alive


class Target:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, SERVE_SCRIPT[0], "--serve", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.process = psutil.Process(self.proc.pid)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.get = info_pb2_grpc.InfoServiceStub(self.channel).get
        self.get(info_pb2.InfoFilter(), timeout=10)  # connected and warm

    def close(self) -> None:
        self.channel.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


SERVE_SCRIPT = [__file__]
REQUEST = info_pb2.InfoFilter()
METADATA = client_metadata(info_pb2.INFO_API_CURRENT, "bench")


def sequential_latency(target: Target, calls: int) -> float:
    """Mean seconds per call, one call at a time."""
    start = time.perf_counter()
    for _ in range(calls):
        target.get(REQUEST, metadata=METADATA, timeout=10)
    return (time.perf_counter() - start) / calls


def cpu_per_call(target: Target, calls: int) -> float:
    """Server CPU seconds (user + system, all its threads) per call, one call at a time."""
    before = target.process.cpu_times()
    for _ in range(calls):
        target.get(REQUEST, metadata=METADATA, timeout=10)
    after = target.process.cpu_times()
    return (after.user + after.system - before.user - before.system) / calls


def throughput(target: Target, calls: int, concurrency: int) -> float:
    """Calls per second with `concurrency` threads sharing one channel."""
    per_thread = max(1, calls // concurrency)
    barrier = threading.Barrier(concurrency + 1)

    def caller() -> None:
        barrier.wait()
        for _ in range(per_thread):
            target.get(REQUEST, metadata=METADATA, timeout=30)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return per_thread * concurrency / (time.perf_counter() - start)


def measure(names: list[str], rounds: int, bench: Callable[[Target], float]) -> dict[str, float]:
    """Median of `rounds` alternating measurements per server."""
    targets = [Target(n) for n in names]
    try:
        samples: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(rounds):
            for t in targets:
                samples[t.name].append(bench(t))
        return {n: statistics.median(v) for n, v in samples.items()}
    finally:
        for t in targets:
            t.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=sorted([*SERVERS, *AIO_SERVERS]), help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only-cpu", action="store_true", help="only the server CPU per call figures")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    names = [*SERVERS, *AIO_SERVERS] if not args.only_cpu else ["bare-aio", "ours-aio", "bare", "ours"]
    if args.only_cpu:
        cpu = measure(names, args.rounds, lambda t: cpu_per_call(t, args.calls))
        for n in names:
            print(f"{n:<12} server CPU/call {cpu[n] * 1e6:8.1f} us")
        print(f"C  CPU/call    ours-aio / bare-aio = {cpu['ours-aio'] / cpu['bare-aio']:.3f}   (goal <= 1.02)")
        print(f"C  CPU/call    ours / bare = {cpu['ours'] / cpu['bare']:.3f}")
        return
    latency = measure(names, args.rounds, lambda t: sequential_latency(t, args.calls))
    rate = measure(names, args.rounds, lambda t: throughput(t, args.calls * 2, args.concurrency))
    cpu = measure(names, args.rounds, lambda t: cpu_per_call(t, args.calls))
    print(f"{'server':<12}{'latency (us)':>14}{'calls/s @' + str(args.concurrency):>16}{'server CPU/call (us)':>22}")
    for n in names:
        print(f"{n:<12}{latency[n] * 1e6:>14.1f}{rate[n]:>16.0f}{cpu[n] * 1e6:>22.1f}")
    print()
    print(f"P1 latency    ours / bare = {latency['ours'] / latency['bare']:.3f}   (goal <= 1.05)")
    print(f"P2 throughput ours / bare = {rate['ours'] / rate['bare']:.3f}   (goal >= 0.95)")
    print(f"P1 latency    ours-aio / bare-aio = {latency['ours-aio'] / latency['bare-aio']:.3f}   (for information)")
    print(f"P2 throughput ours-aio / bare-aio = {rate['ours-aio'] / rate['bare-aio']:.3f}   (goal >= 0.95)")
    best_ours = max(("ours", "ours-aio"), key=rate.__getitem__)
    best_bare = max(("bare", "bare-aio"), key=rate.__getitem__)
    best = rate[best_ours] / rate[best_bare]
    print(f"P2 throughput best ours ({best_ours}) / best bare ({best_bare}) = {best:.3f}   (goal >= 0.95)")
    print(f"C  CPU/call    ours-aio / bare-aio = {cpu['ours-aio'] / cpu['bare-aio']:.3f}   (goal <= 1.02; "
          f"+{(cpu['ours-aio'] - cpu['bare-aio']) * 1e6:.1f} us)")
    print(f"C  CPU/call    ours / bare = {cpu['ours'] / cpu['bare']:.3f}   (for information; "
          f"+{(cpu['ours'] - cpu['bare']) * 1e6:.1f} us)")


if __name__ == "__main__":
    main()
