"""``StateDirLock``: one process at a time on a state directory, naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpc_helper.statedir import StateDirBusy, StateDirLock


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path, holder="demo server")
    first.acquire()
    assert first.held and (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
    assert (tmp_path / "lock").stat().st_mode & 0o777 == 0o600
    with pytest.raises(StateDirBusy) as info:
        StateDirLock(tmp_path, holder="demo server").acquire()
    assert str(info.value) == (
        f"state directory {tmp_path} is in use by another demo server (pid {os.getpid()}); "
        "stop it or choose another --state-dir"
    )
    first.release()
    first.release()  # idempotent
    with StateDirLock(tmp_path) as second:  # free again
        assert second.held
    assert not second.held


def test_a_dead_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from grpc_helper.statedir import StateDirLock\n"
        f"StateDirLock({str(tmp_path)!r}).acquire()\n"
        "os._exit(0)\n"  # dies holding it
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0
    with StateDirLock(tmp_path) as lock:
        assert lock.held
