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

CPU time is read from each server process (the scheduler's per-thread run time), so it measures the work done
for a call rather than how long the call waited: it is steadier than wall-clock figures on a busy machine, but
a loaded 2-core machine still moves it by several percent: use many short rounds, and read the paired ratio
(each round's ratio, then the median).

The asyncio servers answer on their event loop: the bare one hosts an ``async def`` wrapper of the same
InfoManager (grpc.aio would run a plain ``def`` in a thread pool), ours calls it inline like its own. The bare
servers' InfoManager lists the same services as ours, so every server sends the same reply.

A/B: ``--servers bare-aio,ours-aio,ours-aio-no-version,...`` compares any servers (CPU per call only), the
variants removing one part of grpc-helper's per-call work in the benchmark's server process; ``--ref DIR`` adds
``ref:NAME`` servers run from another checkout (before/after).

On a loaded machine, ``--instructions`` counts the instructions each server executes per call under valgrind
(callgrind) instead: a count is not moved by other work, and it ranks the parts' costs when times cannot.

Usage: python bench/core_overhead.py [--calls 2000] [--rounds 5] [--concurrency 32] [--only-cpu]
       python bench/core_overhead.py --servers bare-aio,ours-aio,ours-aio-no-gate --rounds 100 --calls 200
       python bench/core_overhead.py --servers bare-aio,ours-aio --instructions --rounds 3 --calls 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import psutil

from grpc_helper.api import info_pb2, info_pb2_grpc
from grpc_helper.info import InfoManager
from grpc_helper.metadata import client_metadata


def info_manager() -> InfoManager:
    """The bare servers' InfoManager: it lists the same services as ours (info and the built-in ones), so that
    every server sends the same reply (321 bytes) and the difference is the work around the call."""
    from grpc_helper._builtin import BuiltinServices
    from grpc_helper.info import info_descriptor

    manager = InfoManager()
    manager.publish([info_descriptor(manager), *BuiltinServices().descriptors([], lambda: None)])
    return manager


#: Server kinds: each starts a server on 127.0.0.1 and returns (port, the object keeping it alive).
SERVERS: dict[str, Callable[[], tuple[int, object]]] = {}


def server(name: str) -> Callable[[Callable[[], tuple[int, object]]], Callable[[], tuple[int, object]]]:
    def register(start: Callable[[], tuple[int, object]]) -> Callable[[], tuple[int, object]]:
        SERVERS[name] = start
        return start

    return register


@server("bare")
def _bare() -> tuple[int, object]:
    manager = info_manager()
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


async def _bare_aio(register: Callable[[Any], None] | None = None) -> tuple[int, Callable[[], Awaitable[None]]]:
    manager = info_manager()

    class AsyncInfo(info_pb2_grpc.InfoServiceServicer):
        async def get(self, request: info_pb2.InfoFilter, context: object) -> info_pb2.MultiServiceInfo:
            return manager.get(request)

    srv = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    info_pb2_grpc.add_InfoServiceServicer_to_server(AsyncInfo(), srv)
    if register is not None:
        register(srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    return port, lambda: srv.stop(None)


async def _ours_aio() -> tuple[int, Callable[[], Awaitable[None]]]:
    from grpc_helper import AsyncRpcServer

    srv = AsyncRpcServer(0, [], host="127.0.0.1")
    await srv.start()
    return srv.port, srv.shutdown


async def _bare_aio_registered() -> tuple[int, Callable[[], Awaitable[None]]]:
    """The bare asyncio server with the built-in and health services registered too (never called)."""
    from grpc_health.v1 import health_pb2_grpc

    from grpc_helper._builtin import BuiltinServices
    from grpc_helper._health import AsyncHealthServicer

    async def stop(_grace: float) -> None:
        pass

    def register(srv: Any) -> None:
        for d in BuiltinServices().descriptors([], lambda: stop(0), asyncio=True):
            d.register_method(d.manager, srv)
        health_pb2_grpc.add_HealthServicer_to_server(AsyncHealthServicer(), srv)

    return await _bare_aio(register)


AIO_SERVERS.update({"bare-aio": _bare_aio, "ours-aio": _ours_aio, "bare-aio-registered": _bare_aio_registered})

#: A/B variants of ``ours-aio`` (``--servers``): each removes one part of the per-call work, in this benchmark's
#: server process only, to measure what that part costs. Some of them drop a guarantee: measurement only.
VARIANTS: dict[str, Callable[[], None]] = {}


def variant(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(patch: Callable[[], None]) -> Callable[[], None]:
        VARIANTS[name] = patch
        return patch

    return register


@variant("no-services")
def _no_services() -> None:
    import grpc_helper.aio.server as aio_server

    original = aio_server.AsyncRpcServer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "services": False})

    aio_server.AsyncRpcServer.__init__ = init  # type: ignore[method-assign]


@variant("no-wrap")
def _no_wrap() -> None:
    """Methods run as registered: none of grpc-helper's per-call work (version check, admission, error mapping)."""
    from grpc_helper.aio.server import HandlerTable

    original = HandlerTable.__init__

    def init(self: Any, resolve: Any) -> None:
        original(self, None)

    HandlerTable.__init__ = init  # type: ignore[method-assign]


@variant("registered")
def _registered() -> None:
    """The services' methods also registered with grpc.aio, as before the HandlerTable."""
    from grpc_helper.aio import server as aio_server

    registrar: Any = aio_server._Registrar
    original = registrar.add_registered_method_handlers

    def add(self: Any, service_name: str, method_handlers: Any) -> None:
        original(self, service_name, method_handlers)
        self._server.add_registered_method_handlers(service_name, method_handlers)

    registrar.add_registered_method_handlers = add


@variant("no-version")
def _no_version() -> None:
    import grpc_helper._interceptors as interceptors

    interceptors.version_error = lambda info, metadata: None


@variant("no-safe")
def _no_safe() -> None:
    import grpc_helper._interceptors as interceptors

    interceptors.safe_deserializer = lambda deserializer: deserializer  # type: ignore[attr-defined]


@variant("no-gate")
def _no_gate() -> None:
    """Identity, access rule, quota, current identity and call tracking: all of ``CallScope``."""
    from grpc_helper._admission import CallScope

    CallScope.enter = lambda self, context: None  # type: ignore[assignment, method-assign, return-value]
    CallScope.leave = lambda self, ticket: None  # type: ignore[assignment, method-assign]


@variant("no-calls")
def _no_calls() -> None:
    from grpc_helper._debug import CallRegistry

    CallRegistry.begin = lambda self, method, context: 0  # type: ignore[assignment, method-assign]
    CallRegistry.end = lambda self, key: None  # type: ignore[assignment, method-assign]


@variant("no-identity")
def _no_identity() -> None:
    from grpc_helper._admission import CallGate

    original = CallGate.__init__

    def init(self: Any, resolver: Any, quotas: Any, secure: bool = True) -> None:
        original(self, resolver, quotas, False)

    CallGate.__init__ = init  # type: ignore[method-assign]


def aio_server_of(name: str) -> Callable[[], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]]:
    """``ours-aio`` variants are ``ours-aio-<variant>[+<variant>...]``."""
    if name in AIO_SERVERS:
        return AIO_SERVERS[name]
    for patch in name.removeprefix("ours-aio-").split("+"):
        VARIANTS[patch]()
    return _ours_aio


async def serve_aio(name: str) -> None:
    port, stop = await aio_server_of(name)()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await stop()


def serve(name: str) -> None:
    """Child process: start one server, print its port, serve until stdin closes (``name#2``: a second one)."""
    name = name.partition("#")[0]
    if name in AIO_SERVERS or name.startswith("ours-aio-"):
        asyncio.run(serve_aio(name))
        return
    port, alive = SERVERS[name]()
    print(port, flush=True)
    sys.stdin.read()
    del alive


class Target:
    """A server process (``ref:NAME``: server NAME of the checkout given with ``--ref``, for before/after)."""

    def __init__(self, name: str, wrapper: tuple[str, ...] = ()) -> None:
        self.name = name
        name = name.partition("#")[0]  # NAME#2: a second process of server NAME
        script, env = SERVE_SCRIPT[0], None
        if name.startswith("ref:"):
            name = name.removeprefix("ref:")
            script = os.path.join(REF[0], "bench", os.path.basename(script))
            env = {**os.environ, "PYTHONPATH": REF[0]}
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, script, "--serve", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if wrapper else None, text=True, env=env,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.process = psutil.Process(self.proc.pid)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.get = info_pb2_grpc.InfoServiceStub(self.channel).get
        self.get(info_pb2.InfoFilter(), timeout=60)  # connected and warm

    def close(self) -> None:
        self.channel.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


SERVE_SCRIPT = [__file__]
REF = [""]  # --ref: another checkout of the project
REQUEST = info_pb2.InfoFilter()
METADATA = client_metadata(info_pb2.INFO_API_CURRENT, "bench")


def sequential_latency(target: Target, calls: int) -> float:
    """Mean seconds per call, one call at a time."""
    start = time.perf_counter()
    for _ in range(calls):
        target.get(REQUEST, metadata=METADATA, timeout=10)
    return (time.perf_counter() - start) / calls


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of all the process's threads: from the scheduler (ns resolution) where Linux exposes it, else
    user + system (clock ticks: 10 ms)."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{process.pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), open(  # a thread may just end
                f"/proc/{process.pid}/task/{task}/schedstat"
            ) as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except OSError:
        times = process.cpu_times()
        return float(times.user + times.system)


def cpu_per_call(target: Target, calls: int) -> float:
    """Server CPU seconds (all its threads) per call, one call at a time."""
    before = cpu_seconds(target.process)
    for _ in range(calls):
        target.get(REQUEST, metadata=METADATA, timeout=10)
    return (cpu_seconds(target.process) - before) / calls


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


CALLGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")


def instructions(target: Target) -> int:
    """Instructions the server (run under callgrind) executed so far, all threads."""
    out = subprocess.run(["callgrind_control", "-e", "Ir", str(target.proc.pid)], check=True, capture_output=True,
                         text=True).stdout
    return sum(int(n.replace(",", "")) for n in re.findall(r"^\s*Th\s+\d+\s+([\d,]+)", out, re.MULTILINE))


def instructions_per_call(names: list[str], rounds: int, calls: int) -> dict[str, list[float]]:
    """Instructions per sequential call of each server run under valgrind (callgrind): a count, not a time, so
    other work on the machine does not move it (its noise is the server's own timing-dependent work, ~1%)."""
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            target = Target(name, CALLGRIND)
            try:
                for _ in range(200):
                    target.get(REQUEST, metadata=METADATA, timeout=60)
                before = instructions(target)
                for _ in range(calls):
                    target.get(REQUEST, metadata=METADATA, timeout=60)
                samples[name].append((instructions(target) - before) / calls)
            finally:
                target.close()
    return samples


def sample(names: list[str], rounds: int, bench: Callable[[Target], float]) -> dict[str, list[float]]:
    """`rounds` measurements per server, alternating (every other round in reverse order, so that no server
    always follows the same one)."""
    targets = [Target(n) for n in names]
    try:
        samples: dict[str, list[float]] = {n: [] for n in names}
        for i in range(rounds):
            for t in targets if i % 2 == 0 else reversed(targets):
                samples[t.name].append(bench(t))
        return samples
    finally:
        for t in targets:
            t.close()


def measure(names: list[str], rounds: int, bench: Callable[[Target], float]) -> dict[str, float]:
    """Median of `rounds` alternating measurements per server."""
    return {n: statistics.median(v) for n, v in sample(names, rounds, bench).items()}


def paired(samples: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``name``'s measurement ÷ ``base``'s in the same round (drift cancels out)."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[base], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--servers", help="with --only-cpu: servers to compare, comma-separated, e.g. bare-aio,ours-aio,"
                        f"ours-aio-no-version (variants: {', '.join(VARIANTS)}; combine with +)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only-cpu", action="store_true", help="only the server CPU per call figures")
    parser.add_argument("--instructions", action="store_true", help="with --servers: instructions per call under "
                        "valgrind (callgrind) instead of CPU time: deterministic, slow (start with --calls 1000 --rounds 3)")
    parser.add_argument("--ref", default="", help="another checkout (with generated code) for ref:NAME servers")
    args = parser.parse_args()
    REF[0] = os.path.abspath(args.ref) if args.ref else ""
    if args.serve:
        serve(args.serve)
        return
    names = [*SERVERS, *AIO_SERVERS] if not args.only_cpu else ["bare-aio", "ours-aio", "bare", "ours"]
    if args.servers and args.instructions:
        names = args.servers.split(",")
        counts = instructions_per_call(names, args.rounds, args.calls)
        base = names[0]
        print(f"server instructions per call (valgrind), median of {args.rounds} runs of {args.calls} calls; ratio to {base}")
        for n in names:
            mine, ref = statistics.median(counts[n]), statistics.median(counts[base])
            print(f"{n:<44} {mine / 1e3:7.1f} k  {mine / ref:.3f} ({(mine - ref) / 1e3:+6.1f} k)   runs: "
                  + ", ".join(f"{c / 1e3:.1f}" for c in counts[n]))
        return
    if args.servers:
        names = args.servers.split(",")
        samples = sample(names, args.rounds, lambda t: cpu_per_call(t, args.calls))
        base = names[0]
        print(f"server CPU per call, median of {args.rounds} alternating rounds of {args.calls} calls; ratios to {base}: "
              "of the medians, and the median of each round's ratio")
        for n in names:
            mine, ref = statistics.median(samples[n]), statistics.median(samples[base])
            print(f"{n:<44} {mine * 1e6:7.1f} us  {mine / ref:.3f} ({(mine - ref) * 1e6:+6.1f} us)  "
                  f"paired {paired(samples, n, base):.3f}")
        groups: dict[str, list[str]] = {}
        for n in names:  # NAME#2, NAME#3...: more processes of the same server (each process runs a little
            groups.setdefault(n.partition("#")[0], []).append(n)  # faster or slower than another: average them)
        if any(len(members) > 1 for members in groups.values()):
            print("per server, over its processes (each round: the mean of its processes):")
            means = {g: [statistics.mean(r) for r in zip(*(samples[m] for m in members), strict=True)]
                     for g, members in groups.items()}
            first = next(iter(means))
            for g in means:
                mine, ref = statistics.median(means[g]), statistics.median(means[first])
                print(f"{g:<44} {mine * 1e6:7.1f} us  {mine / ref:.3f} ({(mine - ref) * 1e6:+6.1f} us)  "
                      f"paired {paired(means, g, first):.3f}")
        return
    if args.only_cpu:
        samples = sample(names, args.rounds, lambda t: cpu_per_call(t, args.calls))
        cpu = {n: statistics.median(v) for n, v in samples.items()}
        for n in names:
            print(f"{n:<12} server CPU/call {cpu[n] * 1e6:8.1f} us")
        for ours, bare, goal in (("ours-aio", "bare-aio", "   (goal <= 1.02)"), ("ours", "bare", "")):
            print(f"C  CPU/call    {ours} / {bare} = {cpu[ours] / cpu[bare]:.3f} (+{(cpu[ours] - cpu[bare]) * 1e6:.1f} us); "
                  f"paired (median of the rounds' ratios) {paired(samples, ours, bare):.3f}{goal}")
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
