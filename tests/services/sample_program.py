"""A downstream server program built with ``RpcCliParser`` (run by the tests as a subprocess)."""

from __future__ import annotations

import sys

from grpc_helper import RpcCliParser
from grpc_helper.config import ConfigItem, Kind


class ProgramConfig:
    COUNT = ConfigItem("sample-count", "How many", "3", Kind.POSITIVE_INT, user=True)
    MODE = ConfigItem("sample-mode", "A mode", "fast", Kind.enum("fast", "safe"))


def main() -> int:
    cli = RpcCliParser("sample-program", "4.5.6", holders=[ProgramConfig])
    return cli.serve(lambda services: [])


if __name__ == "__main__":
    sys.exit(main())
