"""Per-job cgroups, v2 (unified, with controllers) or v1 (one hierarchy per controller).

At start-up :func:`detect` picks the usable flavour: cgroup v2 when its root offers controllers, else the
v1 hierarchies mounted under ``/sys/fs/cgroup/<controller>`` (machines with a controller-less v2 tree
mounted beside them), else none. Each job gets ``<parent>/<job_id>`` in every controller it uses, created
before the process starts (the exec helper writes its pid into the ``cgroup.procs`` files) and removed
once it ended. Directories are created mode 0755 and the kernel's files are root's 0644: a job, which runs
as another user (see :mod:`grpc_helper.jobs.sandbox`), cannot move itself out, change its limits or create
cgroups.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from grpc_helper.jobs.store import LimitsSpec

_LOG = logging.getLogger(__name__)
DEFAULT_PARENT = "grpc-helper-jobs"
CPU_PERIOD_US = 100_000
_V1_DIRS = {"cpu": ("cpu", "cpu,cpuacct"), "memory": ("memory",), "io": ("blkio",), "pids": ("pids",)}
_V2_NAMES = ("cpu", "memory", "io", "pids")
_DIR_MODE = 0o755  # whatever the umask: jobs (another user) can't create cgroups or write limits here
_RMDIR_ATTEMPTS = 100  # x 10 ms: the kernel may report EBUSY until the last killed task is reaped


class CgroupError(Exception):
    """Limits that cannot be applied on this host (message says why)."""


def _needed(limits: LimitsSpec) -> list[str]:
    needed = []
    if limits.cpus:
        needed.append("cpu")
    if limits.memory_bytes:
        needed.append("memory")
    if limits.io_read_bps or limits.io_write_bps:
        needed.append("io")
    if limits.pids:
        needed.append("pids")
    return needed


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _block_devices() -> list[str]:
    """``major:minor`` of the whole-disk block devices (IO limits apply to each)."""
    devices = []
    for dev in sorted(Path("/sys/block").glob("*/dev")):
        if dev.parent.name.startswith(("loop", "ram")):
            continue
        try:
            devices.append(dev.read_text().strip())
        except OSError:
            continue
    return devices


@dataclass
class JobCgroup:
    """The cgroup directories of one job (one per controller on v1, one on v2)."""

    version: int
    name: str
    dirs: dict[str, Path]  # controller -> directory (several controllers share it on v2)
    paths: list[Path] = field(default_factory=list)

    @property
    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in self.paths]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths:
            try:
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return found

    def kill_all(self) -> None:
        """SIGKILL every process left in the cgroup (even those that left the job's process group)."""
        if self.version == 2 and (self.paths[0] / "cgroup.kill").exists():
            try:
                _write(self.paths[0] / "cgroup.kill", "1")
                return
            except OSError:
                pass
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        """Whether the kernel OOM killer killed a process of this cgroup."""
        mem = self.dirs.get("memory")
        if mem is None:
            return False
        try:
            text = (mem / "memory.events").read_text() if self.version == 2 else (mem / "memory.oom_control").read_text()
        except OSError:
            return False
        counters = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        if "oom_kill" in counters:
            return int(counters["oom_kill"]) > 0
        # Old v1 kernels have no oom_kill counter: a hit limit is the best evidence left.
        try:
            return int((mem / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        """Kill what is left and remove the directories (bounded retries while the kernel lags)."""
        for path in self.paths:
            for _ in range(_RMDIR_ATTEMPTS):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        _LOG.warning("cannot remove cgroup %s: %s", path, e)
                        break
                    self.kill_all()
                    time.sleep(0.01)
            else:
                _LOG.warning("cgroup %s still busy, left behind", path)


@dataclass
class CgroupSupport:
    """What this host offers: ``version`` 2, 1 or 0 (none), the controllers' parent directories, and why."""

    version: int
    bases: dict[str, Path]  # controller -> <hierarchy>/<parent>
    reason: str = ""

    def describe(self) -> str:
        if not self.version:
            return f"cgroups: none usable ({self.reason}); jobs asking for limits are refused"
        ctrls = ", ".join(f"{c}={p}" for c, p in sorted(self.bases.items()))
        missing = [c for c in _V2_NAMES if c not in self.bases]
        extra = f"; missing {', '.join(missing)} ({self.reason})" if missing else ""
        return f"cgroups: v{self.version} ({ctrls}){extra}"

    def check(self, limits: LimitsSpec) -> None:
        """Raise :class:`CgroupError` when a requested limit has no usable controller."""
        missing = [c for c in _needed(limits) if c not in self.bases]
        if missing:
            why = self.reason or "not available"
            raise CgroupError(f"cannot apply {', '.join(missing)} limits: no usable cgroup controller ({why})")

    def create(self, job_id: str, limits: LimitsSpec) -> JobCgroup | None:
        """Create the job's cgroup(s) and write its limits; None when cgroups are not usable at all."""
        self.check(limits)
        if not self.version:
            return None
        dirs = {c: base / job_id for c, base in self.bases.items()}
        paths = list(dict.fromkeys(dirs.values()))
        parent = next(iter(self.bases.values())).name
        cg = JobCgroup(self.version, f"v{self.version}:{parent}/{job_id}", dirs, paths)
        try:
            for path in paths:
                path.mkdir(mode=_DIR_MODE)
            self._apply(cg, limits)
        except OSError as e:
            cg.remove()
            raise CgroupError(f"cannot set up cgroup {cg.name}: {e}") from e
        return cg

    def open(self, name: str) -> JobCgroup | None:
        """The cgroup of a job created by an earlier server run, from its recorded name (None if unknown)."""
        try:
            version, rest = name.split(":", 1)
            job_id = rest.rsplit("/", 1)[1]
        except (ValueError, IndexError):
            return None
        if int(version[1:]) != self.version:
            return None
        dirs = {c: base / job_id for c, base in self.bases.items()}
        return JobCgroup(self.version, name, dirs, [p for p in dict.fromkeys(dirs.values()) if p.exists()])

    def _apply(self, cg: JobCgroup, limits: LimitsSpec) -> None:
        d = cg.dirs
        if self.version == 2:
            if limits.cpus:
                _write(d["cpu"] / "cpu.max", f"{max(1000, int(limits.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            if limits.memory_bytes:
                _write(d["memory"] / "memory.max", str(limits.memory_bytes))
                if (d["memory"] / "memory.swap.max").exists():
                    _write(d["memory"] / "memory.swap.max", "0")  # else the limit only pushes the job to swap
            if limits.pids:
                _write(d["pids"] / "pids.max", str(limits.pids))
            if limits.io_read_bps or limits.io_write_bps:
                parts = (f"rbps={limits.io_read_bps or 'max'}", f"wbps={limits.io_write_bps or 'max'}")
                _write_devices(d["io"] / "io.max", (f"{dev} {' '.join(parts)}" for dev in _block_devices()))
            return
        if limits.cpus:
            _write(d["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(d["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * CPU_PERIOD_US))))
        if limits.memory_bytes:
            _write(d["memory"] / "memory.limit_in_bytes", str(limits.memory_bytes))
            if (d["memory"] / "memory.memsw.limit_in_bytes").exists():
                _write(d["memory"] / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if limits.pids:
            _write(d["pids"] / "pids.max", str(limits.pids))
        if limits.io_read_bps:
            _write_devices(d["io"] / "blkio.throttle.read_bps_device",
                           (f"{dev} {limits.io_read_bps}" for dev in _block_devices()))
        if limits.io_write_bps:
            _write_devices(d["io"] / "blkio.throttle.write_bps_device",
                           (f"{dev} {limits.io_write_bps}" for dev in _block_devices()))


def _write_devices(path: Path, lines: Iterable[str]) -> None:
    # One line per write (the kernel parses one rule per write); some devices refuse throttling.
    done = 0
    last: OSError | None = None
    for line in lines:
        try:
            _write(path, line)
            done += 1
        except OSError as e:
            last = e
    if not done:
        raise last or OSError(errno.ENODEV, "no block device to throttle", str(path))


def _cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _detect_v2(root: Path, parent: str) -> CgroupSupport | str:
    try:
        available = (root / "cgroup.controllers").read_text().split()
    except OSError as e:
        return f"cgroup v2 at {root} unreadable: {e}"
    wanted = [c for c in _V2_NAMES if c in available]
    if not wanted:
        return f"cgroup v2 at {root} has no controllers"
    base = root / parent
    try:
        enabled = (root / "cgroup.subtree_control").read_text().split()
        missing = " ".join(f"+{c}" for c in wanted if c not in enabled)
        if missing:
            _write(root / "cgroup.subtree_control", missing)
        base.mkdir(mode=_DIR_MODE, exist_ok=True)
        _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    except OSError as e:
        return f"cgroup v2 at {root} not writable: {e}"
    reason = "not offered by the v2 root" if len(wanted) < len(_V2_NAMES) else ""
    return CgroupSupport(2, {c: base for c in wanted}, reason)


def _detect_v1(root: Path, parent: str) -> CgroupSupport | str:
    bases: dict[str, Path] = {}
    problems = []
    for ctrl, names in _V1_DIRS.items():
        hierarchy = next((root / n for n in names if (root / n / "cgroup.procs").exists()), None)
        if hierarchy is None:
            problems.append(f"{ctrl}: not mounted")
            continue
        try:
            (hierarchy / parent).mkdir(mode=_DIR_MODE, exist_ok=True)
        except OSError as e:
            problems.append(f"{ctrl}: {e.strerror}")
            continue
        bases[ctrl] = hierarchy / parent
    if not bases:
        return "cgroup v1: " + "; ".join(problems)
    return CgroupSupport(1, bases, "; ".join(problems))


def detect(root: Path | None = None, parent: str = DEFAULT_PARENT, enabled: bool = True) -> CgroupSupport:
    """Find the usable cgroup flavour (v2 with controllers, else v1, else none) and create ``parent``."""
    if not enabled:
        return CgroupSupport(0, {}, "disabled by configuration")
    reasons = []
    v2_root = root if root is not None else _cgroup2_mount()
    if v2_root is not None:
        found = _detect_v2(v2_root, parent)
        if isinstance(found, CgroupSupport):
            return found
        reasons.append(found)
    else:
        reasons.append("no cgroup2 mount")
    v1 = _detect_v1(root if root is not None else Path("/sys/fs/cgroup"), parent)
    if isinstance(v1, CgroupSupport):
        return v1
    reasons.append(v1)
    return CgroupSupport(0, {}, "; ".join(reasons))
