"""``python -m grpc_helper.grid``."""

import sys

from grpc_helper.grid.cli import main

sys.exit(main())
