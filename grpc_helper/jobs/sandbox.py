"""What a job may reach: the user it runs as, its namespaces, and private directories of the server.

The sandbox is applied by the exec helper (``_sandbox_exec``, see :mod:`grpc_helper.jobs._exec`) between the
spawn and the job's exec; this module only decides what to ask for.

**User.** ``run_as`` (a user name or uid) is the account a job runs as, supplementary groups dropped, with
``no_new_privs`` set (setuid binaries give it nothing). Default: ``nobody`` when the server runs as root, else
the server's own user (a non-root server cannot switch users; asking for another one is refused). Jobs run as
root only when ``run_as`` says so.

**Namespaces** (:class:`Isolation`), applied where the kernel lets the server create them (it runs as root):

- ``pid`` (default on where available): the job gets its own PID namespace and a fresh ``/proc``: it sees,
  signals and ptraces only its own processes. Jobs that share a user (``nobody``) need it: without it they could
  signal each other and read each other's ``/proc/PID/environ`` or memory. Inside, the job is pid 2 under a tiny
  init (pid 1, the helper) that reaps orphans; when the job's main process ends, the kernel kills what is left.
  The pid the server reports is the helper's, outside; the job sees other numbers (``$$`` is 2).
- ``net``: its own network namespace with only the loopback interface, up: no network, no access to servers
  listening on the host's loopback (including this server).
- ``tmp``: a private, empty ``/tmp`` (tmpfs, charged to the job's memory cgroup), gone with the job. A ``cwd``
  under ``/tmp`` is then not found.

Where namespaces are not available (a non-root server), the default is no namespace, and asking for one
fails the start with the reason (:func:`support` tells what this host offers).

**Server files.** Jobs run as another user than the server, so 0700 directories owned by the server are closed
to them: :func:`make_private` makes (or fixes) such a directory, for the state and TLS directories.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from grpc_helper.jobs import _exec

_LOG = logging.getLogger(__name__)
DEFAULT_USER = "nobody"


class SandboxError(Exception):
    """The requested user or isolation is not possible here; ``stage`` is ``user`` or ``sandbox``."""

    def __init__(self, stage: str, err: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = err
        self.message = message


@dataclass(frozen=True)
class Isolation:
    """Namespaces of a job (see the module docstring); ``Isolation()`` is the default: pid only."""

    pid: bool = True
    net: bool = False
    tmp: bool = False

    def flags(self) -> str:
        return ("pv" if self.pid else "") + ("n" if self.net else "") + ("t" if self.tmp else "")


NO_ISOLATION = Isolation(pid=False)


@dataclass(frozen=True)
class JobUser:
    """The account a job runs as (``switch``: whether the helper changes user; False for a non-root server)."""

    name: str
    uid: int
    gid: int
    switch: bool


def resolve_user(run_as: str | int | None) -> JobUser:
    """The account for ``run_as`` (name or uid; None: the default), or :class:`SandboxError` (unknown, not allowed)."""
    euid = os.geteuid()
    wanted: str | int = DEFAULT_USER if run_as is None and euid == 0 else (euid if run_as is None else run_as)
    try:
        entry = pwd.getpwuid(int(wanted)) if isinstance(wanted, int) or wanted.isdigit() else pwd.getpwnam(wanted)
    except (KeyError, ValueError, OverflowError):
        raise SandboxError("user", errno.EINVAL, f"unknown user {str(wanted)[:64]!r}") from None
    if euid != 0:
        if entry.pw_uid != euid:
            me = pwd.getpwuid(euid).pw_name if _known(euid) else str(euid)
            raise SandboxError(
                "user", errno.EPERM, f"the server runs as {me!r}, not root: it cannot run jobs as {entry.pw_name!r}"
            )
        return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=False)
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


def _known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class SandboxSupport:
    """Which namespaces this host lets the server create, and why not the others."""

    pid: bool
    net: bool
    tmp: bool
    reason: str = ""

    def default(self) -> Isolation:
        return Isolation(pid=self.pid)

    def check(self, isolation: Isolation) -> None:
        missing = [n for n in ("pid", "net", "tmp") if getattr(isolation, n) and not getattr(self, n)]
        if missing:
            why = self.reason or "not available"
            raise SandboxError("sandbox", errno.EPERM, f"cannot isolate the job ({', '.join(missing)} namespace): {why}")

    def describe(self) -> str:
        have = [n for n in ("pid", "net", "tmp") if getattr(self, n)]
        text = f"job namespaces: {', '.join(have) or 'none'}"
        return f"{text} ({self.reason})" if self.reason else text


_support: SandboxSupport | None = None
_support_lock = threading.Lock()


def _probe(flags: str) -> str:
    """'' when the helper can run ``true`` with ``flags``, else why not."""
    r, w = os.pipe()
    try:
        done = subprocess.run(
            [_exec.helper(), str(w), flags, "0", "0", "/", "0", "--", "true"],
            pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"}, timeout=10, check=False,
        )
        os.close(w)
        w = -1
        report = os.read(r, 4096).decode(errors="replace")
        if report.startswith("pid:"):  # the namespace's init, outside pid (see _sandbox_exec.c)
            report = report.partition("\n")[2]
    except (OSError, subprocess.TimeoutExpired, _exec.HelperError) as e:
        return str(e)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if report:
        _stage, err, detail = ([*report.split(":", 2), "", ""])[:3]
        return f"{detail}: {os.strerror(int(err)) if err.isdigit() else err}"
    return "" if done.returncode == 0 else f"probe exited with {done.returncode}"


def support() -> SandboxSupport:
    """What this host offers (probed once per process with the exec helper; root only)."""
    global _support
    with _support_lock:
        if _support is None:
            if os.geteuid() != 0:
                _support = SandboxSupport(False, False, False, "the server does not run as root")
            else:
                found = {name: _probe(flags) for name, flags in (("pid", "pv"), ("net", "n"), ("tmp", "t"))}
                reason = "; ".join(f"{n}: {why}" for n, why in found.items() if why)
                _support = SandboxSupport(not found["pid"], not found["net"], not found["tmp"], reason)
            _LOG.info("%s", _support.describe())
        return _support


def make_private(path: Path | str) -> Path:
    """Create ``path`` (and parents) if needed and make it mode 0700, owned by the server's user.

    Raise :class:`PermissionError` when it belongs to another user (someone else could open it again).
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = p.stat()
    if st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"{p} belongs to uid {st.st_uid}, not to the server's user", str(p))
    if st.st_mode & 0o7777 != 0o700:
        p.chmod(0o700)
    return p
