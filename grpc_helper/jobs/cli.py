"""``python -m grpc_helper.jobs``: serve the job runner, or run/logs/ps/kill jobs on one, over mTLS."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from google.protobuf import json_format

from grpc_helper import RpcClient
from grpc_helper._cli.endpoint import Endpoint
from grpc_helper._cli.exits import CliError, ExitCode, run
from grpc_helper._cli.parser import add_endpoint, add_version
from grpc_helper._cli.tls import add_client_tls_options, client_credentials
from grpc_helper.jobs import limits as jobs_limits
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc

DEFAULT_HOST = "localhost"
ENDPOINT_ENV = "GRPC_HELPER_JOBS_ENDPOINT"
_STATE_NAMES = {v: k.removeprefix("JOB_") for k, v in jobs_pb2.JobState.items()}
_REASON_NAMES = {v: k.removeprefix("STOP_").lower() for k, v in jobs_pb2.StopReason.items()}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"error: {self.prog}: {message} (see --help)\n")


def parse_size(text: str) -> int:
    """``512M``, ``1.5G``, ``4096`` -> bytes (binary multiples), at most 2^64-1 (the proto fields' range)."""
    try:
        value = jobs_limits.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"size {text[:40]!r} is too large")
    return value


def _uint32(text: str) -> int:
    if not text.strip().isdigit() or int(text) >= 1 << 32:
        raise argparse.ArgumentTypeError(f"expected a whole number between 0 and {(1 << 32) - 1}, not {text[:40]!r}")
    return int(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {text[:40]!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0")
    return value


def _page_size(text: str) -> int:
    value = _uint32(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected a page size between 1 and 1000, not {text[:40]!r}")
    return value


def _state(text: str) -> int:
    name = text.strip().upper()
    value = jobs_pb2.JobState.DESCRIPTOR.values_by_name.get(name if name.startswith("JOB_") else f"JOB_{name}")
    if value is None or value.number == 0:
        names = ", ".join(n.lower() for n in _STATE_NAMES.values() if n != "STATE_UNKNOWN")
        raise argparse.ArgumentTypeError(f"unknown state {text[:40]!r} (one of {names})")
    return int(value.number)


def describe(st: jobs_pb2.JobStatus) -> str:
    """``EXITED code=0``, ``KILLED signal=9 by oom``, ``FAILED_TO_START: exec: ...``."""
    text = _STATE_NAMES.get(st.state, str(st.state))
    if st.state == jobs_pb2.JOB_EXITED:
        text += f" code={st.exit_code}"
    elif st.state == jobs_pb2.JOB_KILLED:
        try:
            text += f" signal={signal.Signals(st.signal).name}"
        except ValueError:
            text += f" signal={st.signal}"
    if st.stopped_by:
        text += f" by {_REASON_NAMES[st.stopped_by]}"
    if st.error:
        text += f": {st.error}"
    return text


def _status_json(st: jobs_pb2.JobStatus) -> dict[str, Any]:
    return json_format.MessageToDict(st, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def ps_table(jobs: Sequence[jobs_pb2.JobStatus]) -> str:
    rows = [("ID", "OWNER", "PID", "STARTED", "STATUS", "COMMAND")]
    for st in jobs:
        cmd = " ".join(st.command)
        rows.append((st.job_id, st.owner, str(st.pid or "-"), _ts(st.start_time), describe(st), cmd[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


# --- client side -----------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> RpcClient:
    endpoint: Endpoint = args.endpoint
    stubs = {"jobs": (jobs_pb2_grpc.JobsStub, jobs_pb2.JOBS_API_CURRENT)}
    credentials = client_credentials(args)
    return RpcClient(endpoint.host, endpoint.port, stubs, credentials=credentials, timeout=args.timeout, name="jobs-cli")


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"invalid --env {item[:80]!r}: expected NAME=VALUE", ExitCode.USAGE)
        env[key] = value
    try:
        limits = jobs_pb2.Limits(
            cpus=args.cpus, memory_bytes=args.memory, io_read_bps=args.io_read, io_write_bps=args.io_write,
            pids=args.pids,
        )
    except (ValueError, TypeError) as e:  # out of a proto field's range
        raise CliError(f"invalid limit: {e}", ExitCode.USAGE) from None
    with _client(args) as client:
        st = client.jobs.Run(jobs_pb2.RunRequest(
            command=command, env=env, cwd=args.cwd, limits=limits, no_network=args.no_network,
            private_tmp=args.private_tmp,
        ))
    if args.json:
        print(json.dumps(_status_json(st)))
    else:
        print(st.job_id)
    if st.state == jobs_pb2.JOB_FAILED_TO_START:
        print(f"error: job failed to start: {st.error}", file=sys.stderr)
        return ExitCode.TASK_FAILED
    return ExitCode.OK


def cmd_logs(args: argparse.Namespace) -> int:
    outs = {jobs_pb2.STDOUT: sys.stdout.buffer, jobs_pb2.STDERR: sys.stderr.buffer}
    with _client(args) as client:
        for chunk in client.jobs.Logs(jobs_pb2.LogsRequest(job_id=args.id, follow=args.follow), timeout=None):
            out = outs.get(chunk.stream, sys.stdout.buffer)
            out.write(chunk.data)
            out.flush()
    return ExitCode.OK


def list_pages(
    call: Callable[[jobs_pb2.ListRequest], jobs_pb2.ListResponse], request: jobs_pb2.ListRequest, limit: int | None
) -> Iterator[jobs_pb2.JobStatus]:
    """The jobs of every page of ``request`` (at most ``limit``; None: all), fetching pages as needed."""
    count = 0
    while True:
        page = call(request)
        for st in page.jobs:
            if limit is not None and count >= limit:
                return
            count += 1
            yield st
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def cmd_ps(args: argparse.Namespace) -> int:
    more = False
    with _client(args) as client:
        if args.id:
            jobs = [client.jobs.Status(jobs_pb2.JobRequest(job_id=args.id))]
        else:
            # Default: the most recent jobs (one page), shown oldest first like a log; --all pages through all.
            limit = None if args.all else args.limit
            request = jobs_pb2.ListRequest(
                page_size=min(1000, limit + 1) if limit is not None else 1000, states=args.state,
                owner=args.owner or "", newest_first=not args.all,
            )
            jobs = list(list_pages(client.jobs.List, request, None if limit is None else limit + 1))
            if limit is not None and len(jobs) > limit:
                jobs, more = jobs[:limit], True
            if not args.all:
                jobs.reverse()
    if args.json:
        items = [_status_json(st) for st in jobs]
        print(json.dumps(items[0] if args.id else items))
    elif args.id:
        print(describe(jobs[0]))
    else:
        print(ps_table(jobs))
    if more:
        print(f"(the {args.limit} most recent shown; --limit N or --all for more)", file=sys.stderr)
    return ExitCode.OK


def cmd_kill(args: argparse.Namespace) -> int:
    request = jobs_pb2.StopRequest(job_id=args.id)
    if args.grace is not None:
        request.grace_seconds = args.grace
    with _client(args) as client:
        answer = client.jobs.Stop(request, timeout=None)
    if args.json:
        print(json.dumps({"stopped": answer.stopped, "status": _status_json(answer.status)}))
    elif answer.stopped:
        print(describe(answer.status))
    else:
        print(f"job already ended: {describe(answer.status)}")
    return ExitCode.OK


def parser(prog: str = "python -m grpc_helper.jobs") -> argparse.ArgumentParser:
    from grpc_helper.jobs import serve

    common = _Parser(add_help=False)
    add_endpoint(common, default_host=DEFAULT_HOST, env=ENDPOINT_ENV)
    add_client_tls_options(common, tls_default=True)
    common.add_argument("--timeout", type=_positive, default=10.0, help="seconds to reach the server (default 10)")
    common.add_argument("--json", action="store_true", help="structured output")

    p = _Parser(prog=prog, description=__doc__)
    add_version(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    serve.add_parser(sub)
    r = sub.add_parser("run", parents=[common], help="start a job, print its id")
    r.add_argument("--cwd", default="", help="absolute working directory (default /)")
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable")
    r.add_argument("--cpus", type=_non_negative, default=0.0, help="CPU limit in cores (e.g. 0.5)")
    r.add_argument("--memory", type=parse_size, default=0, help="memory limit (e.g. 256M)")
    r.add_argument("--pids", type=_uint32, default=0, help="maximum number of processes")
    r.add_argument("--io-read", type=parse_size, default=0, help="read bandwidth limit per device, bytes/s")
    r.add_argument("--io-write", type=parse_size, default=0, help="write bandwidth limit per device, bytes/s")
    r.add_argument("--no-network", action="store_true", help="no network: only a loopback of its own")
    r.add_argument("--private-tmp", action="store_true", help="a private, empty /tmp")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    r.set_defaults(func=cmd_run)
    lg = sub.add_parser("logs", parents=[common], help="print a job's output (raw bytes to stdout/stderr)")
    lg.add_argument("id")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    lg.set_defaults(func=cmd_logs)
    ps = sub.add_parser("ps", parents=[common], help="status of your recent jobs (all jobs for an admin), or of one")
    ps.add_argument("id", nargs="?")
    ps.add_argument("--limit", type=_page_size, default=50, help="how many of the most recent jobs (default 50)")
    ps.add_argument("--all", action="store_true", help="every job, oldest first (page by page)")
    ps.add_argument("--state", type=_state, action="append", default=[],
                    help="only jobs in this state (running, exited, killed, failed_to_start, lost); repeatable")
    ps.add_argument("--owner", help="only this client's jobs (admins)")
    ps.set_defaults(func=cmd_ps)
    k = sub.add_parser("kill", parents=[common], help="stop a job (SIGTERM, then SIGKILL after the grace delay)")
    k.add_argument("id")
    k.add_argument("--grace", type=_non_negative, default=None, help="seconds between SIGTERM and SIGKILL (default 5)")
    k.set_defaults(func=cmd_kill)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m grpc_helper.jobs") -> int:
    args = parser(prog).parse_args(argv)
    return run(lambda: args.func(args))
