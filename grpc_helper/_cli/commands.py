"""The ``grpc-helper`` console script (and ``python -m grpc_helper``): one command, five sub-commands.

    grpc-helper info    what a server hosts          (python -m grpc_helper.info)
    grpc-helper serve   every bundled service         (python -m grpc_helper serve)
    grpc-helper jobs    job runner client and server  (python -m grpc_helper.jobs)
    grpc-helper grid    compute grid                  (python -m grpc_helper.grid)
    grpc-helper certs   TLS material                  (python -m grpc_helper.certs)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence

from grpc_helper._cli.parser import new_parser

#: sub-command -> (module, function, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("grpc_helper.info.cli", "main", "show the services a server hosts"),
    "serve": ("grpc_helper.__main__", "serve_main", "serve every bundled service until Ctrl+C"),
    "jobs": ("grpc_helper.jobs.cli", "main", "job runner: serve, run, logs, ps, kill"),
    "grid": ("grpc_helper.grid.cli", "main", "compute grid: serve, worker, submit, status..."),
    "certs": ("grpc_helper.certs.cli", "main", "TLS material: a private CA and mTLS key pairs"),
}


def main(argv: Sequence[str] | None = None, prog: str = "grpc-helper") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        module, function, _ = COMMANDS[args[0]]
        command = getattr(importlib.import_module(module), function)
        if "prog" in inspect.signature(command).parameters:
            return int(command(args[1:], prog=f"{prog} {args[0]}"))
        return int(command(args[1:]))
    epilog = "commands:\n" + "\n".join(f"  {name:<7} {help_}" for name, (_, _, help_) in COMMANDS.items())
    parser = new_parser(prog, "grpc-helper commands; `COMMAND --help` describes each. Exit codes: see doc/cli.md.")
    parser.epilog = epilog + f"\n\n`{prog} COMMAND --help` for the options of each."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    parser.parse_args(args[:1])  # --help, --version, or a usage error (exit 2)
    return 2  # pragma: no cover (parse_args exits)

