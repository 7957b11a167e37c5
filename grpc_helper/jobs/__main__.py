"""``python -m grpc_helper.jobs serve|run|logs|ps|kill``."""

import sys

from grpc_helper.jobs.cli import main

sys.exit(main())
