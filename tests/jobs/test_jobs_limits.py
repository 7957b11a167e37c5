"""Limits: running jobs per client, the per-job log cap, a full disk (a real small tmpfs), streams without threads."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from grpc_helper import RpcException
from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, collect, first_line, run, status, wait_done

SLEEPER = (PY, "-c", "print('ready', flush=True); import time; time.sleep(60)")


def _sigkilled(st: jobs_pb2.JobStatus) -> bool:
    return (st.state, st.signal) == (jobs_pb2.JOB_KILLED, 9)


def test_running_jobs_per_client_are_limited_others_still_run(jobs_env):
    env = jobs_env(max_running_per_owner=2)
    alice, bob = env.jobs("alice"), env.jobs("bob")
    first, second = run(alice, *SLEEPER), run(alice, *SLEEPER)
    with pytest.raises(RpcException) as info:
        run(alice, *SLEEPER)
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "alice" in info.value.message and "max 2" in info.value.message
    assert run(bob, "true").state in (jobs_pb2.JOB_RUNNING, jobs_pb2.JOB_EXITED)  # bob is not alice
    alice.Stop(jobs_pb2.StopRequest(job_id=first.job_id, grace_seconds=1))
    third = run(alice, *SLEEPER)  # a slot is free again
    assert third.state == jobs_pb2.JOB_RUNNING
    assert [status(alice, j.job_id).state for j in (second, third)] == [jobs_pb2.JOB_RUNNING] * 2
    # Failed starts give their slot back.
    for _ in range(3):
        with pytest.raises(RpcException):
            run(alice, *SLEEPER)
    alice.Stop(jobs_pb2.StopRequest(job_id=second.job_id, grace_seconds=1))
    assert run(alice, "no-such-binary-anywhere").state == jobs_pb2.JOB_FAILED_TO_START
    assert run(alice, *SLEEPER).state == jobs_pb2.JOB_RUNNING


def test_running_jobs_on_the_server_are_limited(jobs_env):
    env = jobs_env(max_running=1)
    run(env.jobs("alice"), *SLEEPER)
    with pytest.raises(RpcException) as info:
        run(env.jobs("bob"), *SLEEPER)
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED and "max 1" in info.value.message


def test_output_past_the_log_limit_kills_the_job_and_keeps_the_first_bytes(jobs_env):
    jobs = jobs_env(max_log_bytes=64 << 10).jobs("alice")
    st = run(jobs, "sh", "-c", "echo start >&2; yes")
    final = wait_done(jobs, st.job_id)
    assert _sigkilled(final), str(final).replace("\n", " ")
    assert final.stopped_by == jobs_pb2.STOP_LOG_LIMIT and "log limit of 64 KiB" in final.error, final
    out = collect(jobs, st.job_id)
    assert len(out[jobs_pb2.STDOUT]) + len(out[jobs_pb2.STDERR]) == 64 << 10, (final, out[jobs_pb2.STDERR])
    # Both streams count; which one the pump reads first is the kernel's business.
    assert b"start\n".startswith(out[jobs_pb2.STDERR]) and set(out[jobs_pb2.STDOUT]) <= set(b"y\n")


def test_output_of_exactly_the_log_limit_is_not_cut(jobs_env):
    jobs = jobs_env(max_log_bytes=64 << 10).jobs("alice")
    st = run(jobs, "head", "-c", str(64 << 10), "/dev/zero")
    final = wait_done(jobs, st.job_id)
    assert final.state == jobs_pb2.JOB_EXITED and final.exit_code == 0 and final.stopped_by == jobs_pb2.STOP_NONE
    assert collect(jobs, st.job_id)[jobs_pb2.STDOUT] == bytes(64 << 10)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (root only: skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_stops_the_job_with_a_reason_and_run_answers_resource_exhausted(small_fs: Path, jobs_server,
                                                                                  rpc_client_factory, tls_dir):
    from grpc_helper import certs as tls

    from .jobs_helpers import STUBS

    server = jobs_server(small_fs / "state", min_free_bytes=0)
    jobs = rpc_client_factory(server, stubs=STUBS, credentials=tls.channel_credentials(tls_dir, "alice"),
                              timeout=10).jobs
    filler = run(jobs, "head", "-c", str(64 << 20), "/dev/zero")
    final = wait_done(jobs, filler.job_id)
    assert _sigkilled(final) and final.stopped_by == jobs_pb2.STOP_NO_SPACE
    assert "No space left on device" in final.error
    # The disk stays full: every Run answers RESOURCE_EXHAUSTED or starts a job that ends with the same reason.
    for _ in range(5):
        try:
            st = run(jobs, "echo", "hello")
        except RpcException as e:
            assert e.status == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in e.message, e
            continue
        end = wait_done(jobs, st.job_id)
        assert end.stopped_by == jobs_pb2.STOP_NO_SPACE or collect(jobs, st.job_id)[jobs_pb2.STDOUT] == b"hello\n"
    assert status(jobs, filler.job_id) == final
    known = {j.job_id for j in jobs.List(jobs_pb2.ListRequest()).jobs}
    assert {p.name.split(".")[0] for p in (small_fs / "state" / "logs").iterdir()} <= known  # refused: no file left
    # The free-space guard refuses before anything is written.
    server.shutdown()
    guarded = jobs_server(small_fs / "state", min_free_bytes=1 << 20)
    jobs = rpc_client_factory(guarded, stubs=STUBS, credentials=tls.channel_credentials(tls_dir, "alice"),
                              timeout=10).jobs
    with pytest.raises(RpcException) as info:
        run(jobs, "true")
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED and "no space for job output" in info.value.message
    assert status(jobs, filler.job_id) == final


def test_waiting_followers_hold_no_thread(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, *SLEEPER)
    assert first_line(jobs, st.job_id) == b"ready"
    before = threading.active_count()
    followers = [env.jobs("alice").Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=None)
                 for _ in range(4)]
    streams = [f for f in followers for _ in range(1)]
    many = [jobs.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=None) for _ in range(100)]
    for f in [*streams, *many]:
        assert next(f).data == b"ready\n"  # each is attached and now waits for more output
    assert threading.active_count() - before < 10  # server and client threads together: not one per stream
    jobs.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=1))
    for f in [*streams, *many]:
        assert list(f) == []  # every follower ends with the job
