"""Unit tests of the building blocks: ids, log store, job store, exec helper."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from grpc_helper.jobs import ids, logs
from grpc_helper.jobs.api import jobs_pb2
from grpc_helper.jobs.logs import STDERR, STDOUT, JobLog
from grpc_helper.jobs.manager import encoded_chunk
from grpc_helper.jobs.process import JobProcess, LaunchSpec, StartError
from grpc_helper.jobs.sandbox import NO_ISOLATION
from grpc_helper.jobs.store import JobRecord, JobStore, LimitsSpec, State, StopReason

from .jobs_helpers import PY


def test_uuid7_is_versioned_ordered_and_random():
    values = [ids.uuid7() for _ in range(1000)]
    assert all(v.version == 7 and v.variant == uuid.RFC_4122 for v in values)
    assert [str(v) for v in values] == sorted(str(v) for v in values)
    assert len(set(values)) == len(values)
    assert abs((values[0].int >> 80) - time.time() * 1000) < 5000
    assert ids.parse(str(values[0]).upper()) == str(values[0])
    assert ids.parse("nope") is None and ids.parse("x" * 1000) is None


def test_log_readers_get_identical_bytes_late_ones_included(tmp_path: Path):
    log = JobLog.create(tmp_path, "job")
    early: list[list[tuple[int, bytes]]] = [[], []]
    readers = [threading.Thread(target=lambda out=out: out.extend(log.read())) for out in early]
    for t in readers:
        t.start()
    payload = [bytes([i % 256]) * (1000 + i) for i in range(200)]
    for i, data in enumerate(payload):
        log.write(STDOUT if i % 3 else STDERR, data)
    late = list(log.read(follow=False))
    log.close()
    for t in readers:
        t.join(10)
        assert not t.is_alive()
    want_out = b"".join(d for i, d in enumerate(payload) if i % 3)
    want_err = b"".join(d for i, d in enumerate(payload) if not i % 3)
    for got in [*early, late, list(JobLog.open(tmp_path, "job").read())]:
        assert b"".join(d for s, d in got if s == STDOUT) == want_out
        assert b"".join(d for s, d in got if s == STDERR) == want_err


def test_log_reader_wakes_on_cancel(tmp_path: Path):
    log = JobLog.create(tmp_path, "job")
    cancel = threading.Event()
    done = threading.Event()

    def reader() -> None:
        for _ in log.read(cancelled=cancel.is_set):
            pass
        done.set()

    threading.Thread(target=reader).start()
    log.write(STDOUT, b"x")
    assert not done.wait(0.1)
    cancel.set()
    log.wake()
    assert done.wait(5)
    log.close()


def test_batched_writes_hold_the_wake_up_until_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A batching writer (the output pump) may hold a wake-up back; a follower then waits for it (more is
    # coming) instead of sending each small piece, and gets everything once the writer releases it.
    monkeypatch.setattr(logs, "WAKE_INTERVAL", 3600.0)
    log = JobLog.create(tmp_path, "job")

    async def scenario() -> bytes:
        got = bytearray()
        first = asyncio.Event()

        async def follow() -> None:
            async for _stream, data in log.follow():
                got.extend(data)
                first.set()

        task = asyncio.create_task(follow())
        log.write(STDOUT, b"a", batch=True)  # nothing was announced for an interval: announced at once
        await first.wait()
        log.write(STDOUT, b"b", batch=True)
        log.write(STDERR, b"c", batch=True)
        held = log.held_wakeup()
        assert held is not None and held > 0
        log.release_wakeup()
        assert log.held_wakeup() is None
        while len(got) < 3:  # woken by the release, not by close()
            await asyncio.sleep(0)
        log.close()
        await task
        return bytes(got)

    assert sorted(asyncio.run(scenario())) == sorted(b"abc")


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, (1 << 20) + 5])
def test_encoded_log_chunks_are_the_messages_bytes(size: int):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for stream, proto_stream in ((STDOUT, jobs_pb2.STDOUT), (STDERR, jobs_pb2.STDERR)):
        encoded = encoded_chunk(stream, data)
        assert encoded == jobs_pb2.LogChunk(stream=proto_stream, data=data).SerializeToString()
        assert jobs_pb2.LogChunk.FromString(encoded) == jobs_pb2.LogChunk(stream=proto_stream, data=data)


def test_store_round_trip(tmp_path: Path):
    store = JobStore(tmp_path / "db")
    rec = JobRecord("b", "alice", ("echo", "é"), "/", limits=LimitsSpec(cpus=0.5, pids=3))
    store.put(rec)
    store.put(JobRecord("a", "bob", ("true",), "/", state=State.EXITED))
    store.put(rec.update(state=State.KILLED, signal=9, stopped_by=StopReason.OOM))
    store.close()
    store = JobStore(tmp_path / "db")
    got = store.get("b")
    assert got == rec.update(state=State.KILLED, signal=9, stopped_by=StopReason.OOM)
    assert [r.job_id for r in store.records()] == ["a", "b"]
    assert [r.job_id for r in store.records("bob")] == ["a"]
    assert store.running() == []
    store.close()


@pytest.mark.parametrize(
    ("spec", "stage", "text"),
    [
        (LaunchSpec(["/no/such/binary"], {}, "/"), "exec", "No such file or directory"),
        (LaunchSpec(["no-such-binary-in-path"], {"PATH": "/usr/bin"}, "/"), "exec", "no-such-binary-in-path"),
        (LaunchSpec(["/dev/null"], {}, "/"), "exec", "Permission denied"),
        (LaunchSpec([PY, "-c", "pass"], {}, "/no/such/dir"), "cwd", "No such file or directory"),
        (LaunchSpec([PY, "-c", "pass"], {}, "/", ["/no/such/cgroup.procs"]), "cgroup", "No such file"),
    ],
)
def test_exec_helper_reports_start_failures(tmp_path: Path, spec: LaunchSpec, stage: str, text: str):
    with pytest.raises(StartError) as info:
        JobProcess(spec, JobLog.create(tmp_path, "job"))
    assert info.value.stage == stage and text in info.value.message and info.value.errno


def test_process_runs_in_own_session_with_env(tmp_path: Path, job_dir: Path):
    log = JobLog.create(tmp_path, "job")
    code = "import os; print(os.getpid() == os.getsid(0) == os.getpgid(0), os.environ['X'], os.getcwd())"
    proc = JobProcess(LaunchSpec([PY, "-c", code], {"X": "y z"}, str(job_dir), isolation=NO_ISOLATION), log)
    codes: list[int] = []
    proc.start(codes.append, lambda: None)
    assert proc.done.wait(20)
    assert codes == [0]
    assert b"".join(d for _, d in JobLog.open(tmp_path, "job").read()) == f"True y z {job_dir}\n".encode()
