"""The exit codes of every grpc-helper command line, and the runner that applies them.

Documented in doc/cli.md; every CLI returns these, so scripts can tell failures apart the same way
whatever the command.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from enum import IntEnum

from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.certs import CertificateError
from grpc_helper.errors import RpcException


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # the command failed for a reason not listed below
    USAGE = 2  # bad command line (argparse's own code)
    UNREACHABLE = 3  # server unreachable, or no answer before the deadline
    NOT_FOUND = 4  # no such item (job, worker, service...)
    DENIED = 5  # not authenticated, or not allowed
    INVALID = 6  # the server refused an argument
    CONFLICT = 7  # the item's state or the API version does not allow it
    CERTIFICATE = 8  # TLS material missing, unreadable, invalid or mismatched
    EXHAUSTED = 9  # a quota or limit was reached
    TASK_FAILED = 10  # the command worked, but what it ran failed (job failed to start, grid job failed)
    PORT_BUSY = 11  # a server could not bind its port
    INTERRUPTED = 130  # Ctrl+C


_BY_RESULT: dict[int, ExitCode] = {
    ResultCode.ERROR_RPC: ExitCode.UNREACHABLE,
    ResultCode.ERROR_DEADLINE: ExitCode.UNREACHABLE,
    ResultCode.ERROR_STREAM_SHUTDOWN: ExitCode.UNREACHABLE,
    ResultCode.ERROR_ITEM_UNKNOWN: ExitCode.NOT_FOUND,
    ResultCode.ERROR_PERMISSION_DENIED: ExitCode.DENIED,
    ResultCode.ERROR_UNAUTHENTICATED: ExitCode.DENIED,
    ResultCode.ERROR_PARAM_INVALID: ExitCode.INVALID,
    ResultCode.ERROR_PARAM_MISSING: ExitCode.INVALID,
    ResultCode.ERROR_STATE_UNEXPECTED: ExitCode.CONFLICT,
    ResultCode.ERROR_ITEM_EXISTS: ExitCode.CONFLICT,
    ResultCode.ERROR_API_CLIENT_TOO_OLD: ExitCode.CONFLICT,
    ResultCode.ERROR_API_SERVER_TOO_OLD: ExitCode.CONFLICT,
    ResultCode.ERROR_RESOURCE_EXHAUSTED: ExitCode.EXHAUSTED,
    ResultCode.ERROR_PORT_BUSY: ExitCode.PORT_BUSY,
}


#: How grpc reports a TLS handshake that failed on the client's side (e.g. a server certificate the CA does not sign).
_HANDSHAKE = re.compile(r"handshake failed[^:]*:(?:.*OPENSSL_internal:)?\s*([^:]+(?::[^:]+)?)", re.IGNORECASE)


def exit_code(error: RpcException) -> ExitCode:
    """The exit code for a failed call."""
    if tls_failure(error):
        return ExitCode.CERTIFICATE
    return _BY_RESULT.get(error.rc, ExitCode.ERROR)


def tls_failure(error: RpcException) -> str | None:
    """What went wrong when a call failed because the TLS handshake did (None otherwise)."""
    if error.rc != ResultCode.ERROR_RPC:
        return None
    found = _HANDSHAKE.search(error.message)
    return found.group(1).strip() if found else None


class CliError(Exception):
    """A failure the command reports as one ``error:`` line with its exit code."""

    def __init__(self, message: str, code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = int(code)


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def run(command: Callable[[], int | None]) -> int:
    """Run ``command``; a failure becomes one ``error: ...`` line on stderr and its exit code (no traceback)."""
    try:
        return int(command() or ExitCode.OK)
    except CliError as exc:
        error(str(exc))
        return exc.code
    except CertificateError as exc:
        error(str(exc))
        return ExitCode.CERTIFICATE
    except RpcException as exc:
        why = tls_failure(exc)
        if why:
            error(f"TLS handshake with the server failed: {why} (is the CA certificate the one that signed the server's?)")
        else:
            error(exc.message)
        return exit_code(exc)
    except BrokenPipeError:
        # `... | head`: the reader went away; stop quietly (and keep Python from complaining at exit).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
