"""The job exec helper: ``_sandbox_exec``, a small C program built from ``_sandbox_exec.c`` with the system cc.

It is built when the package is built or installed (``setup.py`` loads this file by path and calls
:func:`build`), and otherwise on first use when it is missing or older than its source (a source checkout):
:func:`helper` returns its path or raises :class:`HelperError` saying what to install. On x86-64 and aarch64
it is built without libc (see the C source: a static glibc start-up costs more than the rest of a job
start); when that build fails (another compiler or architecture) it is built against libc.

Standard library only, and no import of ``grpc_helper``: the build hook runs before the package is importable.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("_sandbox_exec.c")
BINARY = Path(__file__).with_name("_sandbox_exec")
_NOLIBC = [
    "-static", "-nostdlib", "-ffreestanding", "-fno-builtin", "-fno-stack-protector", "-fno-pie", "-no-pie",
    "-fno-tree-loop-distribute-patterns", "-fno-asynchronous-unwind-tables",
]
_LIBC = ["-DSANDBOX_EXEC_LIBC"]
_LOG = logging.getLogger(__name__)
_lock = threading.Lock()
_ready: str | None = None


class HelperError(Exception):
    """The exec helper cannot be built or found (message says what to install)."""


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise HelperError(
            f"no C compiler to build the job exec helper from {SOURCE.name}: install one (e.g. apt-get install gcc)"
            " or set CC, then reinstall grpc-helper"
        )
    return cc


def build(dest: Path = BINARY, source: Path = SOURCE) -> Path:
    """Compile the helper to ``dest`` (atomically replaced); raise :class:`HelperError` with the compiler's words."""
    cc = _compiler()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    errors = []
    try:
        for flags in (_NOLIBC, _LIBC):
            cmd = [cc, "-O2", "-Wall", *flags, "-o", str(tmp), str(source)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise HelperError(f"cannot run the C compiler {cc!r}: {e}") from e
            if done.returncode == 0:
                tmp.chmod(0o755)
                os.replace(tmp, dest)
                return dest
            errors.append(f"{' '.join(cmd)}:\n{done.stderr.strip()[-1500:]}")
    except OSError as e:
        raise HelperError(f"cannot write the job exec helper {dest}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    raise HelperError("cannot build the job exec helper:\n" + "\n".join(errors))


def _stale() -> bool:
    try:
        return BINARY.stat().st_mtime < SOURCE.stat().st_mtime
    except FileNotFoundError:  # an installed package may ship the binary alone
        return False


def helper() -> str:
    """Path of the built helper, building it if missing or older than its source (once per process)."""
    global _ready
    if _ready is not None:
        return _ready
    with _lock:
        if _ready is None:
            if not BINARY.exists():
                build()
            elif _stale():
                try:
                    build()
                except HelperError as e:
                    _LOG.warning("using the existing job exec helper %s, older than its source: %s", BINARY, e)
            _ready = str(BINARY)
    return _ready
