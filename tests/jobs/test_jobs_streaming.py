"""Logs streaming over the real service: both streams, binary, concurrent and late readers, follow, cancel."""

from __future__ import annotations

import threading

import grpc
import pytest

from grpc_helper import RpcException
from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, collect, first_line, run, status, wait_done

# Prints "ready", waits for a file to appear (readers attach meanwhile), then writes 2 MiB of every byte
# value to stdout and binary markers to stderr.
BINARY = r"""
import os, sys, time
block = bytes(range(256)) * 4096
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
for i in range(2):
    sys.stdout.buffer.write(block); sys.stdout.flush()
    sys.stderr.buffer.write(b"\x00err\xff%d\n" % i); sys.stderr.flush()
"""
WANT_OUT = b"ready\n" + bytes(range(256)) * 4096 * 2
WANT_ERR = b"\x00err\xff0\n\x00err\xff1\n"


def test_stdout_stderr_binary_concurrent_and_late_readers(jobs_env, job_dir):
    jobs = jobs_env().jobs("alice")
    go = job_dir / "go"
    st = run(jobs, PY, "-c", BINARY, str(go))
    assert first_line(jobs, st.job_id) == b"ready"
    results: list[dict[int, bytes]] = []
    readers = [threading.Thread(target=lambda: results.append(collect(jobs, st.job_id))) for _ in range(3)]
    for t in readers:
        t.start()
    go.touch()
    for t in readers:
        t.join(30)
        assert not t.is_alive()
    late = collect(jobs, st.job_id)  # after the end: from the first byte
    snapshot = collect(jobs, st.job_id, follow=False)
    for got in [*results, late, snapshot]:
        assert got[jobs_pb2.STDOUT] == WANT_OUT
        assert got[jobs_pb2.STDERR] == WANT_ERR
    final = status(jobs, st.job_id)
    assert final.state == jobs_pb2.JOB_EXITED and final.exit_code == 0 and final.end_time >= final.start_time


def test_follow_ends_when_the_job_ends_and_snapshot_does_not_wait(jobs_env):
    jobs = jobs_env().jobs("alice")
    st = run(jobs, PY, "-c", "print('ready', flush=True); import time; time.sleep(60)")
    assert first_line(jobs, st.job_id) == b"ready"
    assert collect(jobs, st.job_id, follow=False)[jobs_pb2.STDOUT] == b"ready\n"  # returns while running
    ended = threading.Event()

    def follow() -> None:
        collect(jobs, st.job_id)
        ended.set()

    threading.Thread(target=follow).start()
    assert not ended.wait(0.2)
    jobs.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=5))
    assert ended.wait(10)


def test_a_burst_then_silence_reaches_followers_while_the_job_runs(jobs_env):
    # The output pump batches its wake-ups while output keeps coming: the last piece of a burst must still go
    # out while the job is silent (not only when it ends).
    jobs = jobs_env().jobs("alice")
    burst = "import sys, time\nfor i in range(200): sys.stdout.write(f'{i}\\n'); sys.stdout.flush()\n" \
            "print('end', flush=True); time.sleep(60)\n"
    st = run(jobs, PY, "-c", burst)
    want = "".join(f"{i}\n" for i in range(200)).encode() + b"end\n"
    data = b""
    for chunk in jobs.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=20):
        data += chunk.data
        if data.endswith(b"end\n"):
            break
    assert data == want
    assert status(jobs, st.job_id).state == jobs_pb2.JOB_RUNNING
    jobs.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=5))


def test_reader_that_disconnects_mid_stream_is_cleaned_up(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, PY, "-c", "import sys, time\nfor i in range(10**6): print(i, flush=True); time.sleep(0.001)")
    for _ in range(20):  # readers that read one chunk and go away, cancelled explicitly or by deadline
        it = jobs.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=None)
        next(it)
        it.close()  # cancels the call
    with pytest.raises(RpcException) as info:
        collect(jobs, st.job_id, timeout=0.3)
    assert info.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server still serves everyone: new jobs, statuses, streams.
    assert wait_done(jobs, run(jobs, "echo", "still here").job_id).exit_code == 0
    jobs.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=1))
    assert status(jobs, st.job_id).state == jobs_pb2.JOB_KILLED


def test_client_that_never_reads_does_not_block_others(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, PY, "-c", "import sys; sys.stdout.buffer.write(b'x' * (8 << 20))")
    lazy = env.client("alice").jobs.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=None)
    next(lazy)  # starts the stream, then never reads again
    assert len(collect(jobs, st.job_id)[jobs_pb2.STDOUT]) == 8 << 20
    assert status(jobs, st.job_id).state == jobs_pb2.JOB_EXITED
    lazy.close()


def test_server_shutdown_ends_followers(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, PY, "-c", "print('ready', flush=True); import time; time.sleep(60)")
    assert first_line(jobs, st.job_id) == b"ready"
    outcome: list[object] = []
    attached = threading.Event()

    def follow() -> None:
        try:
            for _ in jobs.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=30):
                attached.set()
            outcome.append("ended")
        except RpcException as e:
            outcome.append(e)

    t = threading.Thread(target=follow)
    t.start()
    assert attached.wait(10)  # else the call could arrive after shutdown and be retried as unreachable
    env.server.shutdown(grace=1.0)
    t.join(20)
    assert not t.is_alive() and outcome
