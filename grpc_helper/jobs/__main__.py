"""``python -m grpc_helper.jobs serve|run|logs|ps|kill``."""

import sys

from grpc_helper.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
