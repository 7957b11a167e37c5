"""Job start latency: our sandboxed spawn of ``true`` vs a bare ``subprocess.Popen(["true"])``, side by side.

Alternating rounds; each round times, in turn:

- ``bare``: ``subprocess.Popen(["true"])`` (returns once ``true`` is exec'd);
- ``default``: ``JobProcess`` with the defaults (run as ``nobody`` with no_new_privs and no groups when root,
  own PID namespace and /proc where available), placed in a cgroup made beforehand (returns once ``true``
  is exec'd in its sandbox);
- ``default+cgroup``: the same, the creation of the job's cgroup (every controller) included, as ``Run`` does;
- ``isolated``: PID, network and /tmp namespaces, cgroup placement included.

Reaping, supervision threads and cgroup removal happen outside the timed part. Prints medians (ms) and
ratios to ``bare``. ``python bench/jobs_spawn.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from grpc_helper.jobs.cgroups import JobCgroup, detect
from grpc_helper.jobs.logs import JobLog
from grpc_helper.jobs.process import JobProcess, LaunchSpec
from grpc_helper.jobs.sandbox import Isolation, support
from grpc_helper.jobs.store import LimitsSpec

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    cgroups = detect()
    host = support()
    logs = Path(tempfile.mkdtemp(prefix="jobs-spawn-bench-"))
    print(f"{cgroups.describe()}; {host.describe()}")

    def job(isolation: Isolation | None, create_cgroup: bool) -> Callable[[], float]:
        def once() -> float:
            name = uuid.uuid4().hex
            log = JobLog.create(logs, name)
            cg: JobCgroup | None = None
            if not create_cgroup:
                cg = cgroups.create(name, LimitsSpec())
            t0 = time.perf_counter()
            if create_cgroup:
                cg = cgroups.create(name, LimitsSpec())
            proc = JobProcess(LaunchSpec(["true"], ENV, "/", cg.procs_files if cg else (), isolation=isolation), log)
            elapsed = time.perf_counter() - t0
            proc.start(lambda rc: None, lambda: None)
            proc.done.wait(30)
            if cg is not None:
                cg.remove()
            return elapsed

        return once

    def bare() -> float:
        t0 = time.perf_counter()
        p = subprocess.Popen(["true"])
        elapsed = time.perf_counter() - t0
        p.wait()
        return elapsed

    full = Isolation(pid=host.pid, net=host.net, tmp=host.tmp)
    cases: dict[str, Callable[[], float]] = {
        "bare": bare,
        "default": job(None, False),
        "default+cgroup": job(None, True),
        f"isolated ({full.flags() or 'none available'})": job(full, False),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up: helper built, host probed, caches hot
        fn()
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(fn())
    base = statistics.median(times["bare"])
    print(f"{args.rounds} alternating rounds, medians:")
    for name, values in times.items():
        med = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"  {name:<24} {med * 1e3:7.3f} ms  (p90 {p90 * 1e3:7.3f} ms)  x{med / base:5.2f} bare")


if __name__ == "__main__":
    main()
