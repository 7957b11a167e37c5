"""Run/Stop/Status over the service: process groups, children, bad input, restart durability."""

from __future__ import annotations

import os
import random

import grpc
import psutil
import pytest
from sample_service import wait_until

from grpc_helper import RpcException
from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, collect, first_line, run, status, wait_done

# Starts two children (one in the background of a shell), prints their pids once all exist.
FAMILY = (
    "import subprocess, sys, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "a = subprocess.Popen(['sleep', '60']);"
    "b = subprocess.Popen(['sh', '-c', 'sleep 60 & echo started; wait'], stdout=subprocess.PIPE); b.stdout.readline();"
    "print(a.pid, b.pid, flush=True); a.wait()"
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _marked_sleep() -> str:
    """A sleep duration no other process uses: finds the job's sleep from the host (its pid inside differs)."""
    return f"{60 + random.random():.9f}"


def _alive_with_args(*args: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["cmdline"] == list(args) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p.pid)
    return found


def test_stop_kills_the_whole_group_after_grace_and_twice_is_a_no_op(jobs_env):
    jobs = jobs_env().jobs("alice")
    st = run(jobs, PY, "-c", FAMILY)
    assert st.pid > 0 and st.state == jobs_pb2.JOB_RUNNING
    assert len(first_line(jobs, st.job_id).split()) == 2  # pids inside the job's namespace
    children = [p.pid for p in psutil.Process(st.pid).children(recursive=True)]
    assert len(children) == 5 and all(not _gone(p) for p in children)  # init, python, sleep, sh, sleep
    answer = jobs.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=0.3))  # leader ignores SIGTERM
    assert answer.stopped
    assert answer.status.state == jobs_pb2.JOB_KILLED and answer.status.signal == 9
    assert answer.status.stopped_by == jobs_pb2.STOP_USER
    assert all(_gone(p) for p in [st.pid, *children])
    again = jobs.Stop(jobs_pb2.StopRequest(job_id=st.job_id))
    assert not again.stopped and again.status == answer.status


def test_leader_exit_kills_leftover_children(jobs_env):
    jobs = jobs_env().jobs("alice")
    mark = _marked_sleep()
    st = run(jobs, "sh", "-c", f"sleep {mark} & echo $!")
    final = wait_done(jobs, st.job_id)
    assert final.state == jobs_pb2.JOB_EXITED and final.exit_code == 0
    assert collect(jobs, st.job_id)[jobs_pb2.STDOUT].strip().isdigit()
    assert _alive_with_args("sleep", mark) == []


def test_exit_codes_signals_env_cwd(jobs_env, job_dir):
    jobs = jobs_env().jobs("alice")
    assert wait_done(jobs, run(jobs, "sh", "-c", "exit 7").job_id).exit_code == 7
    killed = wait_done(jobs, run(jobs, "sh", "-c", "kill -USR1 $$").job_id)
    assert killed.state == jobs_pb2.JOB_KILLED and killed.signal == 10 and killed.stopped_by == jobs_pb2.STOP_NONE
    st = run(jobs, "sh", "-c", 'echo "$FOO" "$(pwd)"', env={"FOO": "bar baz"}, cwd=str(job_dir))
    wait_done(jobs, st.job_id)
    assert collect(jobs, st.job_id)[jobs_pb2.STDOUT] == f"bar baz {job_dir}\n".encode()


def test_missing_binary_and_bad_cwd_fail_to_start(jobs_env):
    jobs = jobs_env().jobs("alice")
    st = run(jobs, "definitely-not-a-binary", "x")
    assert st.state == jobs_pb2.JOB_FAILED_TO_START and st.pid == 0
    assert "No such file or directory" in st.error and "definitely-not-a-binary" in st.error
    assert status(jobs, st.job_id) == st
    assert collect(jobs, st.job_id) == {jobs_pb2.STDOUT: b"", jobs_pb2.STDERR: b""}
    bad_cwd = run(jobs, "true", cwd="/no/such/dir")
    assert bad_cwd.state == jobs_pb2.JOB_FAILED_TO_START and bad_cwd.error.startswith("cwd:")


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"command": []}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": [""]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["echo"] * 5000}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["echo", "x" * (2 << 20)]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["echo", "a\0b"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "env": {"A=B": "c"}}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "cwd": "relative"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "limits": {"cpus": -1}}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "limits": {"cpus": float("nan")}}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "limits": {"cpus": 1000}}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "limits": {"memory_bytes": 10}}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "limits": {"memory_bytes": 1 << 60}}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "limits": {"io_read_bps": 1}}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"command": ["true"], "limits": {"pids": 1 << 30}}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_run_requests(jobs_env, request_fields, code):
    jobs = jobs_env().jobs("alice")
    fields = dict(request_fields)
    if "limits" in fields:
        fields["limits"] = jobs_pb2.Limits(**fields["limits"])
    with pytest.raises(RpcException) as info:
        jobs.Run(jobs_pb2.RunRequest(**fields))
    assert info.value.status == code and info.value.message
    assert jobs.List(jobs_pb2.ListRequest()).jobs == []


@pytest.mark.parametrize(
    ("job_id", "code"),
    [("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT), ("", grpc.StatusCode.INVALID_ARGUMENT),
     ("01a21033-8cba-714e-9532-9b3644660c61", grpc.StatusCode.NOT_FOUND)],
)
def test_bad_job_ids(jobs_env, job_id, code):
    jobs = jobs_env().jobs("alice")
    for call in (
        lambda: status(jobs, job_id),
        lambda: jobs.Stop(jobs_pb2.StopRequest(job_id=job_id)),
        lambda: collect(jobs, job_id),
    ):
        with pytest.raises(RpcException) as info:
            call()
        assert info.value.status == code


def test_bad_grace(jobs_env):
    jobs = jobs_env().jobs("alice")
    st = run(jobs, "true")
    with pytest.raises(RpcException) as info:
        jobs.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=-1))
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT


def test_restart_keeps_finished_jobs_and_marks_running_ones_lost(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    done = run(jobs, "sh", "-c", "echo out; echo err >&2")
    wait_done(jobs, done.job_id)
    mark = _marked_sleep()
    running = run(jobs, "sh", "-c", f"sleep {mark} & echo $!; wait")
    child_inside = int(first_line(jobs, running.job_id))
    # The shell printed the pid before its child became `sleep` (exec): wait for it, bounded.
    assert wait_until(lambda: len(_alive_with_args("sleep", mark)) == 1, 30)
    [child] = _alive_with_args("sleep", mark)
    # Simulate a crash: the manager never stops the job; recovery must find and kill it.
    env.server.manager._live.clear()
    env = env.restart()
    jobs = env.jobs("alice")
    lost = status(jobs, running.job_id)
    assert lost.state == jobs_pb2.JOB_LOST and lost.stopped_by == jobs_pb2.STOP_SERVER and "restart" in lost.error
    assert wait_until(lambda: _gone(running.pid) and _gone(child), 30)
    assert status(jobs, done.job_id).state == jobs_pb2.JOB_EXITED
    assert collect(jobs, done.job_id) == {jobs_pb2.STDOUT: b"out\n", jobs_pb2.STDERR: b"err\n"}
    assert collect(jobs, running.job_id)[jobs_pb2.STDOUT] == f"{child_inside}\n".encode()
    assert [j.job_id for j in jobs.List(jobs_pb2.ListRequest()).jobs] == [done.job_id, running.job_id]


def test_graceful_shutdown_stops_running_jobs(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, "sleep", "60")
    env = env.restart()
    final = status(env.jobs("alice"), st.job_id)
    assert final.state == jobs_pb2.JOB_KILLED and final.stopped_by == jobs_pb2.STOP_SERVER
    assert _gone(st.pid)
    assert os.path.exists(env.state_dir / "jobs.sqlite3")
