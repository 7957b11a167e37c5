"""`make demo` stays working: the script runs end to end against a real server (mTLS, jobs, grid)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parent.parent / "tools" / "demo.sh"


def test_demo_runs_end_to_end() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(DEMO)], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for service in ("info", "jobs", "grid_client", "grid_worker", "grid_controller"):
        assert f"\n{service} " in out
    assert "line 3" in out and "EXITED code=0" in out
    assert ": epsilon" in out and "submitted=5 done=5" in out  # grid job ids grow across restarts: not 1..5
    assert out.rstrip().endswith("demo finished")
