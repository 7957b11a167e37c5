"""Attacks from inside a job, with real processes, users, cgroups and namespaces (as root; skipped otherwise).

Each test is something a job tried against the server or another job; each must now fail to do harm.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from grpc_helper import certs as tls
from grpc_helper.jobs.cgroups import JobCgroup, detect
from grpc_helper.jobs.logs import STDERR, STDOUT, JobLog
from grpc_helper.jobs.process import JobProcess, LaunchSpec, StartError
from grpc_helper.jobs.sandbox import NO_ISOLATION, Isolation, SandboxError, SandboxSupport, make_private, support
from grpc_helper.jobs.store import LimitsSpec

from .jobs_helpers import PY

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users and creating namespaces needs root")
HOST = support()
CGROUPS = detect()
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}


def _needs(*names: str) -> None:
    missing = [n for n in names if not getattr(HOST, n)]
    if missing:
        pytest.skip(f"{', '.join(missing)} namespace not available here: {HOST.reason}")


def _run(tmp_path: Path, argv: list[str], **spec: object) -> tuple[int, str, str]:
    """Run a job to its end; its exit code (or -signal), stdout and stderr."""
    name = uuid.uuid4().hex
    log = JobLog.create(tmp_path, name)
    proc = JobProcess(LaunchSpec(argv, dict(ENV), str(spec.pop("cwd", "/")), **spec), log)  # type: ignore[arg-type]
    codes: list[int] = []
    proc.start(codes.append, lambda: None)
    assert proc.done.wait(30)
    out = {STDOUT: b"", STDERR: b""}
    for stream, data in JobLog.open(tmp_path, name).read(follow=False):
        out[stream] += data
    return codes[0], out[STDOUT].decode(), out[STDERR].decode()


def _py(tmp_path: Path, code: str, **spec: object) -> tuple[int, str, str]:
    return _run(tmp_path, [PY, "-c", textwrap.dedent(code)], **spec)


# --- user, groups, no_new_privs ---------------------------------------------------------------------------


@needs_root
def test_job_runs_as_nobody_without_groups_and_with_no_new_privs(tmp_path: Path):
    rc, out, err = _run(tmp_path, ["sh", "-c", "id -u; id -g; grep -E '^(Groups|NoNewPrivs|CapEff):' /proc/self/status"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["65534", "65534"]
    fields = dict(line.split(":", 1) for line in lines[2:])
    assert fields["Groups"].strip() == "" and fields["NoNewPrivs"].strip() == "1"
    assert int(fields["CapEff"].strip(), 16) == 0


@needs_root
def test_run_as_root_only_when_asked_and_other_users_by_name_or_uid(tmp_path: Path):
    rc, out, _ = _run(tmp_path, ["sh", "-c", "id -u; grep -E '^(Groups|NoNewPrivs):' /proc/self/status"], run_as="root")
    assert rc == 0 and out.splitlines()[0] == "0"
    assert "Groups:\t\n" in out + "\n" or out.splitlines()[1].split(":", 1)[1].strip() == ""
    assert out.splitlines()[2].split(":", 1)[1].strip() == "1"
    assert _run(tmp_path, ["id", "-un"], run_as="daemon")[1] == "daemon\n"
    assert _run(tmp_path, ["id", "-u"], run_as=1)[1] == "1\n"
    with pytest.raises(StartError) as info:
        _run(tmp_path, ["true"], run_as="no-such-user-here")
    assert info.value.stage == "user" and "unknown user" in info.value.message


@needs_root
def test_setuid_binaries_give_a_job_nothing(tmp_path: Path, job_dir: Path):
    # A setuid-root copy of `id`: without no_new_privs it would report euid 0.
    suid = job_dir / "suid-id"
    suid.write_bytes(Path("/usr/bin/id").read_bytes())
    suid.chmod(0o4755)
    rc, out, err = _run(tmp_path, [str(suid), "-u"])
    assert rc == 0, err
    assert out == "65534\n"


# --- the server's files and process -----------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("isolation", [None, NO_ISOLATION], ids=["default", "no-namespaces"])
def test_job_cannot_read_server_state_tls_or_environment(tmp_path: Path, job_dir: Path, isolation: Isolation | None):
    # The server's directories sit in a directory every user can traverse: only their own modes protect them.
    state = make_private(job_dir / "state")
    (state / "jobs.sqlite3").write_bytes(b"secret")
    (state / "logs").mkdir(mode=0o755)
    (state / "logs" / "bob.out").write_bytes(b"bob's output")
    (state / "logs" / "bob.out").chmod(0o644)
    tls_dir = tls.init(job_dir / "tls", ["alice"], ["root"])
    targets = [
        state / "jobs.sqlite3", state / "logs" / "bob.out", tls_dir / "ca.key", tls_dir / "server.key",
        tls_dir / "alice.key", Path(f"/proc/{os.getpid()}/environ"), Path(f"/proc/{os.getpid()}/mem"),
    ]
    code = """
        import sys
        for path in sys.argv[1:]:
            try:
                with open(path, "rb") as f:
                    print("READ", path, len(f.read(100)))
            except OSError as e:
                print("refused", path, e.errno)
        """
    rc, out, err = _run(tmp_path, [PY, "-c", textwrap.dedent(code), *map(str, targets)], isolation=isolation)
    assert rc == 0, err
    assert "READ" not in out and out.count("refused") == len(targets), out


def test_make_private_creates_and_repairs_0700_dirs(tmp_path: Path):
    d = make_private(tmp_path / "a" / "state")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    d.chmod(0o755)
    make_private(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@needs_root
def test_make_private_refuses_a_directory_of_another_user(tmp_path: Path):
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, 65534, 65534)
    with pytest.raises(PermissionError, match="not to the server's user"):
        make_private(d)


# --- cgroups ----------------------------------------------------------------------------------------------


@pytest.fixture
def job_cgroup() -> Iterator[JobCgroup]:
    if not CGROUPS.version:
        pytest.skip(f"no usable cgroups here: {CGROUPS.reason}")
    cg = CGROUPS.create(f"sandbox-test-{uuid.uuid4().hex}", LimitsSpec())
    assert cg is not None
    yield cg
    cg.remove()


@needs_root
def test_job_cannot_leave_its_cgroup_or_change_its_limits(tmp_path: Path, job_cgroup: JobCgroup):
    paths = sorted({str(p.parent.parent / "cgroup.procs") for p in job_cgroup.paths})  # the hierarchies' roots
    paths += sorted({str(p.parent / "cgroup.procs") for p in job_cgroup.paths})  # the jobs' parent
    limit_files = [str(f) for p in job_cgroup.paths for f in p.iterdir() if f.name.endswith((".max", "limit_in_bytes"))]
    code = """
        import os, sys
        before = open("/proc/self/cgroup").read()
        procs, limits, own = sys.argv[1].split(","), sys.argv[2].split(",") if sys.argv[2] else [], sys.argv[3]
        for path in procs + limits:
            try:
                with open(path, "w") as f:
                    f.write("0")
                print("WROTE", path)
            except OSError as e:
                print("refused", e.errno)
        try:
            os.mkdir(os.path.join(own, "escape"))
            print("MADE a cgroup")
        except OSError as e:
            print("refused", e.errno)
        print("same" if open("/proc/self/cgroup").read() == before else "MOVED")
        """
    own = str(job_cgroup.paths[0])
    argv = [PY, "-c", textwrap.dedent(code), ",".join(paths), ",".join(limit_files), own]
    rc, out, err = _run(tmp_path, argv, cgroup_procs=job_cgroup.procs_files)
    assert rc == 0, err
    assert "WROTE" not in out and "MADE" not in out and "MOVED" not in out, out
    assert out.count("refused") == len(paths) + len(limit_files) + 1
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in job_cgroup.paths)


# --- other jobs -------------------------------------------------------------------------------------------


@needs_root
def test_jobs_cannot_signal_or_inspect_each_other_or_the_server(tmp_path: Path):
    _needs("pid")
    victim_log = JobLog.create(tmp_path, "victim")
    victim = JobProcess(LaunchSpec(["sleep", "60"], dict(ENV), "/"), victim_log)
    codes: list[int] = []
    victim.start(codes.append, lambda: None)
    try:
        inside = [p.pid for p in psutil.Process(victim.pid).children(recursive=True)]  # its init, then sleep
        targets = [victim.pid, *inside, os.getpid()]
        code = """
            import os, signal, sys
            for pid in map(int, sys.argv[1:]):
                try:
                    os.kill(pid, signal.SIGKILL)
                    print("KILLED", pid)
                except OSError as e:
                    print("refused kill", e.errno)
                try:
                    print("READ", len(open(f"/proc/{pid}/environ", "rb").read()))
                except OSError as e:
                    print("refused read", e.errno)
            """
        rc, out, err = _run(tmp_path, [PY, "-c", textwrap.dedent(code), *map(str, targets)])
        assert rc == 0, err
        assert "KILLED" not in out and "READ" not in out, out
        assert not victim.done.is_set() and all(psutil.pid_exists(p) for p in [victim.pid, *inside])
    finally:
        victim.stop(1.0)
    assert codes == [-signal.SIGTERM]


@needs_root
def test_pid_namespace_shows_only_the_jobs_processes(tmp_path: Path):
    _needs("pid")
    code = """
        import os, subprocess
        child = subprocess.Popen(["sleep", "5"])
        print(os.getpid(), os.getppid(), sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
        child.kill()
        """
    rc, out, err = _py(tmp_path, code)
    assert rc == 0, err
    assert out.split(" ", 2) == ["2", "0", "[1, 2, 3]\n"]  # init, the job (its parent is outside), its child


def test_default_isolation_follows_what_the_host_offers():
    assert SandboxSupport(True, True, True).default() == Isolation(pid=True, net=False, tmp=False)
    assert SandboxSupport(False, False, False, "not root").default() == NO_ISOLATION
    with pytest.raises(SandboxError, match=r"net namespace.*not root"):
        SandboxSupport(False, False, False, "not root").check(Isolation(pid=False, net=True))


@needs_root
def test_network_namespace_has_only_loopback_and_cannot_reach_the_host(tmp_path: Path):
    _needs("net")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = """
            import os, socket, sys
            print(sorted(name for _, name in socket.if_nameindex()))
            try:
                socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
                print("CONNECTED to the host")
            except OSError as e:
                print("refused", e.errno)
            with socket.create_server(("127.0.0.1", 0)) as own:  # its own loopback works
                socket.create_connection(own.getsockname(), timeout=5).close()
                print("own loopback ok")
            """
        rc, out, err = _run(tmp_path, [PY, "-c", textwrap.dedent(code), str(port)], isolation=Isolation(net=True))
    assert rc == 0, err
    assert out.splitlines() == ["['lo']", "refused 111", "own loopback ok"]


@needs_root
def test_private_tmp_is_empty_and_vanishes(tmp_path: Path):
    _needs("tmp")
    marker = Path("/tmp") / f"grpc-helper-host-{uuid.uuid4().hex}"
    marker.write_text("host")
    left = Path("/tmp") / f"grpc-helper-job-{uuid.uuid4().hex}"
    try:
        code = f"import os; print(os.listdir('/tmp')); open({str(left)!r}, 'w').write('x')"
        rc, out, err = _py(tmp_path, code, isolation=Isolation(tmp=True))
        assert rc == 0, err
        assert out == "[]\n" and not left.exists()
        rc, out, _ = _py(tmp_path, "import os; print(os.listdir('/tmp'))", isolation=Isolation())
        assert marker.name in out  # without it, /tmp is the host's
    finally:
        marker.unlink()


# --- failures and descriptors -----------------------------------------------------------------------------


def _fds() -> set[str]:
    """Open descriptors with what they point to (a pipe's inode, a file): a leak shows as a new pair even when
    it reuses the number of a descriptor that something else closed meanwhile."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:  # closed since the listing
            continue
    return found


@pytest.mark.filterwarnings("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
def test_failed_starts_leak_no_descriptor_or_process(tmp_path: Path):
    bad = [
        LaunchSpec(["no-such-binary"], dict(ENV), "/"),
        LaunchSpec(["true"], dict(ENV), "/no/such/dir"),
        LaunchSpec(["true"], dict(ENV), "/", ["/no/such/cgroup.procs"]),
        LaunchSpec(["/etc"], dict(ENV), "/"),
        LaunchSpec(["true"], dict(ENV), "/", run_as="no-such-user-here"),
    ]
    children_before = {p.pid for p in psutil.Process().children()}
    _run(tmp_path, ["true"])  # the helper is built, the host probed: what stays open from now on is a leak
    fds_before = _fds()
    for i in range(10):
        for j, spec in enumerate(bad):
            log = JobLog.create(tmp_path, f"bad-{i}-{j}")
            with pytest.raises(StartError):
                JobProcess(spec, log)
            log.close()
    assert _fds() - fds_before == set()  # others' threads in this process may close theirs meanwhile
    left = {p.pid for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE}
    assert left <= children_before


def test_spawning_with_2000_descriptors_open_and_jobs_inherit_none(tmp_path: Path):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    opened = [os.open("/dev/null", os.O_RDONLY) for _ in range(2000)]
    try:
        assert max(opened) > 1024  # past select()'s FD_SETSIZE
        inheritable = opened[-1]
        os.set_inheritable(inheritable, True)  # even one left inheritable by mistake is not passed on
        before = _fds()
        for _ in range(3):
            rc, out, err = _py(tmp_path, "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))")
            assert rc == 0, err
            assert out == "[0, 1, 2, 3]\n"  # stdin, stdout, stderr and the listing itself
        assert _fds() - before == set()
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_helper_is_built_from_its_source():
    from grpc_helper.jobs import _exec

    path = Path(_exec.helper())
    assert path.exists() and os.access(path, os.X_OK)
    assert path.stat().st_mtime >= _exec.SOURCE.stat().st_mtime


def test_run_past_1024_descriptors_and_failed_runs_leak_nothing(jobs_env):
    """Over the service: at 2,000 open descriptors Run works; failed Runs leave no descriptor or cgroup."""
    import resource

    from grpc_helper.jobs.api import jobs_pb2

    from .jobs_helpers import run, wait_done

    jobs = jobs_env().jobs("alice")
    assert wait_done(jobs, run(jobs, "true").job_id).exit_code == 0  # warm: helper built, host probed
    bases = sorted(set(CGROUPS.bases.values()))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    opened = [os.open("/dev/null", os.O_RDONLY) for _ in range(2000)]
    try:
        fds_before = _fds()
        failed_ids = []
        for _ in range(5):
            failed = run(jobs, "true", cwd="/no/such/dir")
            assert failed.state == jobs_pb2.JOB_FAILED_TO_START and failed.error.startswith("cwd:")
            missing = run(jobs, "no-such-binary-here")
            assert missing.state == jobs_pb2.JOB_FAILED_TO_START and "no-such-binary-here" in missing.error
            failed_ids += [failed.job_id, missing.job_id]
        # Failed Runs are synchronous: nothing they opened may remain (the warm job's last descriptors may
        # still be closing: fewer is fine).
        assert _fds() - fds_before == set()
        assert not [b / job_id for b in bases for job_id in failed_ids if (b / job_id).exists()]
        ok = run(jobs, "sh", "-c", "echo fine")
        assert wait_done(jobs, ok.job_id).exit_code == 0
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_to_others(path: Path) -> bool:
    path = path.resolve()
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents])


NON_ROOT_SERVER = """
import os, tempfile
from pathlib import Path
from grpc_helper.jobs.logs import JobLog
from grpc_helper.jobs.process import JobProcess, LaunchSpec, StartError
from grpc_helper.jobs.sandbox import Isolation, SandboxError, resolve_user, support
user = resolve_user(None)
print("default", user.name, user.switch)
try:
    resolve_user("root")
    print("root ALLOWED")
except SandboxError as e:
    print("root refused", e.stage)
print("namespaces", support().pid, support().net, support().tmp)
logs = Path(tempfile.mkdtemp())
try:
    JobProcess(LaunchSpec(["true"], {"PATH": "/usr/bin:/bin"}, "/", isolation=Isolation(pid=True)), JobLog.create(logs, "a"))
    print("pid ALLOWED")
except StartError as e:
    print("pid refused", e.stage)
job = JobProcess(LaunchSpec(["id", "-u"], {"PATH": "/usr/bin:/bin"}, "/"), JobLog.create(logs, "b"))
codes = []
job.start(codes.append, lambda: None)
job.done.wait(30)
print("job", codes, b"".join(d for _, d in JobLog.open(logs, "b").read(follow=False)).decode().strip())
"""


@needs_root
def test_a_server_not_running_as_root_runs_jobs_as_itself_without_namespaces(tmp_path: Path):
    """The server's code run as ``nobody`` (a job of ours): no user switch, no namespaces, clear refusals."""
    import grpc

    import grpc_helper

    package_root = Path(grpc_helper.__file__).parent.parent
    deps = Path(grpc.__file__).parent.parent
    if not (_open_to_others(package_root) and _open_to_others(deps)):
        pytest.skip(f"{package_root} or {deps} is not readable by other users")
    env = {**ENV, "PYTHONPATH": f"{package_root}:{deps}"}
    log = JobLog.create(tmp_path, "server")
    proc = JobProcess(LaunchSpec([PY, "-c", NON_ROOT_SERVER], env, "/", run_as="nobody"), log)
    codes: list[int] = []
    proc.start(codes.append, lambda: None)
    assert proc.done.wait(60)
    out = b"".join(d for _, d in JobLog.open(tmp_path, "server").read(follow=False)).decode()
    assert codes == [0], out
    assert out.splitlines() == [
        "default nobody False", "root refused user", "namespaces False False False", "pid refused sandbox", "job [0] 65534",
    ]
