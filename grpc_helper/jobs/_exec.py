"""Exec helper: join the job's cgroups, then exec the command (run by the server, never imported).

Run as ``python -I -S _exec.py SPEC_FD ERR_FD``: it reads a JSON spec ``{"argv", "env", "cwd", "cgroups"}``
from SPEC_FD, changes directory, writes its own pid into each ``cgroup.procs`` file, then ``execvpe``s.
It is already the leader of a new session (the server starts it with ``start_new_session``), so the job
keeps the same pid, session and process group. Any failure is reported as one JSON line
``{"stage", "errno", "error"}`` on ERR_FD (closed on exec, so EOF without data means success) and exit 127.

This replaces ``preexec_fn``, which is unsafe in a multi-threaded server. It only uses the standard
library and does not import grpc_helper, so it starts fast.
"""

import json
import os
import sys


def main() -> None:
    spec_fd, err_fd = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(err_fd, False)  # close-on-exec: EOF tells the server that exec succeeded
    stage = "spec"
    try:
        with os.fdopen(spec_fd, "rb") as f:
            spec = json.loads(f.read())
        stage = "cwd"
        os.chdir(spec["cwd"])
        stage = "cgroup"
        pid = str(os.getpid()).encode()
        for procs in spec["cgroups"]:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        stage = "exec"
        argv = spec["argv"]
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        message = f"{e.strerror or e}"
        if stage == "exec":
            message += f": {spec['argv'][0]!r}"
        elif e.filename is not None:
            message += f": {e.filename!r}"
        report = {"stage": stage, "errno": e.errno or 0, "error": message}
    except Exception as e:  # a malformed spec is a server bug; still report it rather than die silently
        report = {"stage": stage, "errno": 0, "error": f"{type(e).__name__}: {e}"}
    os.write(err_fd, json.dumps(report).encode())
    os._exit(127)


if __name__ == "__main__":
    main()
