"""``python -m grpc_helper.info``: same as ``grpc-helper info``."""

import sys

from grpc_helper.info.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m grpc_helper.info"))
