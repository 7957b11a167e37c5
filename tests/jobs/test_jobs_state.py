"""The state directory: one server at a time (the second is refused, naming the first), private files, purge."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from grpc_helper import RpcException
from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, collect, run, status, wait_done


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_second_server_on_the_same_state_dir_is_refused_and_names_the_first(jobs_env, jobs_server):
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, PY, "-c", "import time; time.sleep(60)")
    with pytest.raises(RpcException) as info:
        jobs_server(env.state_dir)
    assert f"in use by another jobs server (pid {os.getpid()})" in info.value.message
    assert str(env.state_dir) in info.value.message
    assert status(jobs, st.job_id).state == jobs_pb2.JOB_RUNNING  # the first server's job was not touched
    env = env.restart()  # once the first one stopped, the directory is free again
    assert status(env.jobs("alice"), st.job_id).stopped_by == jobs_pb2.STOP_SERVER


def test_state_dir_and_files_are_private(jobs_env, tmp_path: Path):
    (tmp_path / "state" / "logs").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "state", 0o755)  # an existing directory left open is closed
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, "sh", "-c", "echo out; echo err >&2")
    wait_done(jobs, st.job_id)
    assert _mode(env.state_dir) == 0o700 and _mode(env.state_dir / "logs") == 0o700
    files = [p for p in env.state_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"jobs.sqlite3", "lock", f"{st.job_id}.stdout", f"{st.job_id}.stderr"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_dir_owned_by_another_user_is_refused(jobs_env, tmp_path: Path):
    (tmp_path / "state").mkdir(mode=0o700)
    os.chown(tmp_path / "state", 65534, 65534)  # nobody: it could reopen the directory whatever its mode
    with pytest.raises(RpcException) as info:
        jobs_env()
    assert "belongs to uid 65534" in info.value.message


def test_purge_keeps_the_most_recent_finished_jobs(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    done = [wait_done(jobs, run(jobs, "echo", str(i)).job_id) for i in range(4)]
    running = run(jobs, PY, "-c", "import time; time.sleep(60)")
    env.server.shutdown()
    env = env.restart(keep_count=2)  # at start-up (then every 10 minutes)
    jobs = env.jobs("alice")
    listed = [j.job_id for j in jobs.List(jobs_pb2.ListRequest()).jobs]
    # The running job was stopped at shutdown, so it is finished too: it and the last echo are kept.
    assert listed == [done[3].job_id, running.job_id]
    assert collect(jobs, done[3].job_id)[jobs_pb2.STDOUT] == b"3\n"
    for gone in done[:3]:
        assert not list(env.state_dir.glob(f"logs/{gone.job_id}.*"))
        with pytest.raises(RpcException):
            status(jobs, gone.job_id)


def test_purge_by_age_spares_running_jobs(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    old = wait_done(jobs, run(jobs, "true").job_id)
    env = env.restart(keep_age=0.001)
    jobs = env.jobs("alice")
    sleeper = run(jobs, PY, "-c", "import time; time.sleep(60)")
    assert [j.job_id for j in jobs.List(jobs_pb2.ListRequest()).jobs] == [sleeper.job_id]
    with pytest.raises(RpcException):
        status(jobs, old.job_id)
