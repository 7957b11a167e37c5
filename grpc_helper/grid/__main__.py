"""``python -m grpc_helper.grid``."""

import sys

from grpc_helper.grid.cli import main

if __name__ == "__main__":
    sys.exit(main())
