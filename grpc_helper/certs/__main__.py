"""``python -m grpc_helper.certs``: same as ``grpc-helper certs``."""

import sys

from grpc_helper.certs.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m grpc_helper.certs"))
