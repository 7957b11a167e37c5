"""cgroup limits with the real cgroups of this host (skipped, with the reason, where they are not usable)."""

from __future__ import annotations

import grpc
import pytest

from grpc_helper import RpcException
from grpc_helper.jobs.api import jobs_pb2
from grpc_helper.jobs.cgroups import detect

from .jobs_helpers import PY, collect, run, wait_done

SUPPORT = detect()
needs_cgroups = pytest.mark.skipif(not SUPPORT.version, reason=f"no usable cgroups here: {SUPPORT.reason}")


def _needs(controller: str) -> None:
    if controller not in SUPPORT.bases:
        pytest.skip(f"cgroup controller {controller} not usable here: {SUPPORT.reason}")


@needs_cgroups
def test_memory_hog_is_oom_killed_and_reported(jobs_env):
    _needs("memory")
    jobs = jobs_env().jobs("alice")
    hog = "b = bytearray(); [b.extend(b'x' * (1 << 20)) for _ in range(1024)]; print('survived')"
    st = run(jobs, PY, "-c", hog, limits=jobs_pb2.Limits(memory_bytes=64 << 20))
    assert st.limits.memory_bytes == 64 << 20 and st.cgroup.startswith(f"v{SUPPORT.version}:")
    final = wait_done(jobs, st.job_id)
    assert final.state == jobs_pb2.JOB_KILLED and final.signal == 9
    assert final.stopped_by == jobs_pb2.STOP_OOM
    assert b"survived" not in collect(jobs, st.job_id)[jobs_pb2.STDOUT]
    job_dir = SUPPORT.bases["memory"] / st.job_id
    assert not job_dir.exists()  # removed after the end


@needs_cgroups
def test_cpu_limited_busy_loop_gets_about_its_quota(jobs_env):
    _needs("cpu")
    jobs = jobs_env().jobs("alice")
    busy = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\nprint(time.process_time())"
    st = run(jobs, PY, "-c", busy, limits=jobs_pb2.Limits(cpus=0.2))
    assert wait_done(jobs, st.job_id).exit_code == 0
    cpu = float(collect(jobs, st.job_id)[jobs_pb2.STDOUT])
    # 0.2 core for 1.5 s is 0.3 s of CPU (interpreter start-up included); unlimited would be ~1.5 s.
    assert 0.1 < cpu < 0.6, cpu


@needs_cgroups
def test_pids_limit_and_cgroup_membership(jobs_env):
    _needs("pids")
    jobs = jobs_env().jobs("alice")
    code = (
        "import subprocess\nprint(open('/proc/self/cgroup').read(), flush=True)\n"
        "try:\n    ps = [subprocess.Popen(['sleep', '5']) for _ in range(20)]\nexcept OSError as e:\n    print('refused', e.errno)\n"
    )
    st = run(jobs, PY, "-c", code, limits=jobs_pb2.Limits(pids=5))
    wait_done(jobs, st.job_id)
    out = collect(jobs, st.job_id)[jobs_pb2.STDOUT].decode()
    assert st.job_id in out  # the exec helper placed the process in its cgroup before exec
    assert "refused 11" in out  # EAGAIN from fork once 5 tasks exist


@needs_cgroups
def test_io_limits_are_applied(jobs_env):
    _needs("io")
    jobs = jobs_env().jobs("alice")
    st = run(jobs, "true", limits=jobs_pb2.Limits(io_read_bps=10 << 20, io_write_bps=5 << 20))
    final = wait_done(jobs, st.job_id)
    assert final.state == jobs_pb2.JOB_EXITED and final.limits.io_write_bps == 5 << 20


def test_limits_without_cgroups_are_refused(jobs_env):
    jobs = jobs_env(cgroups=False).jobs("alice")
    with pytest.raises(RpcException) as info:
        run(jobs, "true", limits=jobs_pb2.Limits(memory_bytes=64 << 20))
    assert info.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert "memory" in info.value.message and "disabled" in info.value.message
    plain = run(jobs, "true")  # without limits a job still runs, just without a cgroup
    assert plain.cgroup == "" and wait_done(jobs, plain.job_id).exit_code == 0


def test_v2_limits_written_to_a_fake_unified_tree(tmp_path):
    from grpc_helper.jobs.store import LimitsSpec

    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    support = detect(tmp_path, "parent")
    assert support.version == 2 and set(support.bases) == {"cpu", "io", "memory", "pids"}
    assert "v2" in support.describe()
    cg = support.create("job", LimitsSpec(cpus=0.5, memory_bytes=64 << 20, pids=7))
    assert cg is not None and cg.procs_files == [str(tmp_path / "parent" / "job" / "cgroup.procs")]
    job = tmp_path / "parent" / "job"
    assert (job / "cpu.max").read_text() == "50000 100000"
    assert (job / "memory.max").read_text() == str(64 << 20)
    assert (job / "pids.max").read_text() == "7"
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed()
    assert support.open(cg.name) is not None


def test_no_cgroup_mount_means_none(tmp_path):
    support = detect(tmp_path / "nothing", "parent")
    assert support.version == 0 and support.reason
    with pytest.raises(Exception, match="no usable cgroup"):
        from grpc_helper.jobs.store import LimitsSpec

        support.check(LimitsSpec(pids=3))
