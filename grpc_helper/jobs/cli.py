"""``python -m grpc_helper.jobs``: serve the job runner, or run/logs/ps/kill jobs on one, over mTLS."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from grpc_helper import ResultCode, RpcClient, RpcException
from grpc_helper import certs as tls
from grpc_helper._cli.parser import add_version
from grpc_helper.jobs import limits as jobs_limits
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc

DEFAULT_ENDPOINT = "localhost:50051"

# Exit codes: distinct per failure kind so that scripts can tell them apart.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse
EXIT_FAILED_TO_START = 3
EXIT_NOT_FOUND = 4
EXIT_DENIED = 5
EXIT_UNAVAILABLE = 6
EXIT_INVALID = 7
EXIT_PRECONDITION = 8
_EXIT_BY_RC: dict[int, int] = {
    ResultCode.ERROR_ITEM_UNKNOWN: EXIT_NOT_FOUND,
    ResultCode.ERROR_PERMISSION_DENIED: EXIT_DENIED,
    ResultCode.ERROR_UNAUTHENTICATED: EXIT_DENIED,
    ResultCode.ERROR_RPC: EXIT_UNAVAILABLE,
    ResultCode.ERROR_DEADLINE: EXIT_UNAVAILABLE,
    ResultCode.ERROR_PARAM_INVALID: EXIT_INVALID,
    ResultCode.ERROR_PARAM_MISSING: EXIT_INVALID,
    ResultCode.ERROR_STATE_UNEXPECTED: EXIT_PRECONDITION,
    ResultCode.ERROR_API_CLIENT_TOO_OLD: EXIT_PRECONDITION,
    ResultCode.ERROR_API_SERVER_TOO_OLD: EXIT_PRECONDITION,
    ResultCode.ERROR_RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,
}
_STATE_NAMES = {v: k.removeprefix("JOB_") for k, v in jobs_pb2.JobState.items()}
_REASON_NAMES = {v: k.removeprefix("STOP_").lower() for k, v in jobs_pb2.StopReason.items()}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see --help)\n")


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


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host.strip("[]"):
        raise CliError(f"invalid endpoint {text!r}: expected HOST:PORT", EXIT_USAGE)
    return host.strip("[]"), int(port)


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


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials:
    try:
        return tls.channel_credentials(
            args.tls_dir, args.name, cert=args.cert, key=args.key, ca=args.ca
        )
    except (OSError, tls.CertificateError) as e:
        raise CliError(
            f"cannot read TLS material: {e} (create it with: python -m grpc_helper.certs init {args.tls_dir} "
            f"--client {args.name or tls.default_client()}; or pass --cert/--key/--ca)", EXIT_DENIED
        ) from None


def _client(args: argparse.Namespace) -> RpcClient:
    host, port = parse_endpoint(args.endpoint)
    stubs = {"jobs": (jobs_pb2_grpc.JobsStub, jobs_pb2.JOBS_API_CURRENT)}
    return RpcClient(host, port, stubs, credentials=_credentials(args), timeout=args.timeout, name="jobs-cli")


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"invalid --env {item!r}: expected NAME=VALUE", EXIT_USAGE)
        env[key] = value
    try:
        limits = jobs_pb2.Limits(
            cpus=args.cpus, memory_bytes=args.memory, io_read_bps=args.io_read, io_write_bps=args.io_write,
            pids=args.pids,
        )
    except (ValueError, TypeError) as e:  # out of a proto field's range
        raise CliError(f"invalid limit: {e}", EXIT_INVALID) from None
    with _client(args) as client:
        st = client.jobs.Run(jobs_pb2.RunRequest(command=command, env=env, cwd=args.cwd, limits=limits))
    if args.json:
        print(json.dumps(_status_json(st)))
    else:
        print(st.job_id)
    if st.state == jobs_pb2.JOB_FAILED_TO_START:
        print(f"error: job failed to start: {st.error}", file=sys.stderr)
        return EXIT_FAILED_TO_START
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    outs = {jobs_pb2.STDOUT: sys.stdout.buffer, jobs_pb2.STDERR: sys.stderr.buffer}
    with _client(args) as client:
        for chunk in client.jobs.Logs(jobs_pb2.LogsRequest(job_id=args.id, follow=args.follow), timeout=None):
            out = outs.get(chunk.stream, sys.stdout.buffer)
            out.write(chunk.data)
            out.flush()
    return EXIT_OK


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
    return EXIT_OK


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
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    from grpc_helper.jobs import serve

    common = _Parser(add_help=False)
    common.add_argument("--endpoint", default=os.environ.get("GRPC_HELPER_JOBS_ENDPOINT", DEFAULT_ENDPOINT),
                        help=f"server HOST:PORT (default {DEFAULT_ENDPOINT}, or $GRPC_HELPER_JOBS_ENDPOINT)")
    common.add_argument("--tls-dir", default=str(tls.default_dir()),
                        help="TLS directory from `python -m grpc_helper.certs init` (default %(default)s)")
    common.add_argument("--name", default=None, help="client identity in the TLS directory (default: login name)")
    common.add_argument("--cert", type=Path, help="certificate file (overrides the TLS directory)")
    common.add_argument("--key", type=Path, help="private key file (overrides the TLS directory)")
    common.add_argument("--ca", type=Path, help="CA certificate file (overrides the TLS directory)")
    common.add_argument("--timeout", type=_positive, default=10.0, help="seconds to reach the server (default 10)")
    common.add_argument("--json", action="store_true", help="structured output")

    p = _Parser(prog="python -m grpc_helper.jobs", description=__doc__)
    add_version(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    serve.add_parser(sub, common)
    r = sub.add_parser("run", parents=[common], help="start a job, print its id")
    r.add_argument("--cwd", default="", help="absolute working directory (default /)")
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable")
    r.add_argument("--cpus", type=_non_negative, default=0.0, help="CPU limit in cores (e.g. 0.5)")
    r.add_argument("--memory", type=parse_size, default=0, help="memory limit (e.g. 256M)")
    r.add_argument("--pids", type=_uint32, default=0, help="maximum number of processes")
    r.add_argument("--io-read", type=parse_size, default=0, help="read bandwidth limit per device, bytes/s")
    r.add_argument("--io-write", type=parse_size, default=0, help="write bandwidth limit per device, bytes/s")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except RpcException as e:
        print(f"error: {e.message}", file=sys.stderr)
        return _EXIT_BY_RC.get(e.rc, EXIT_ERROR)
    except BrokenPipeError:
        return EXIT_OK  # `logs | head`: the reader went away
    except KeyboardInterrupt:
        return 130
