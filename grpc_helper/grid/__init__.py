"""Compute grid: clients submit opaque jobs, remote workers run them, a controller steers; nothing lost.

- ``GridClient`` / ``AsyncGridClient``: submit jobs (bytes) for ``(service_id, version)``, get results.
- ``GridWorker``: serve one ``(service_id, version)`` with a ``handler(bytes) -> bytes``.
- ``GridController``: status, stop/start workers, shutdown.
- ``descriptors(**options)``: the grid services, to host in an ``AsyncRpcServer``.
"""

__title__ = "grpc-helper-grid"
__version__ = "1.0.0"

from grpc_helper.grid._session import JobError
from grpc_helper.grid.aio_client import AsyncGridClient, AsyncJobHandle
from grpc_helper.grid.client import GridClient, JobHandle
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.controller import GridController
from grpc_helper.grid.manager import descriptors
from grpc_helper.grid.service import Grid
from grpc_helper.grid.worker import GridWorker

__all__ = [
    "AsyncGridClient",
    "AsyncJobHandle",
    "Grid",
    "GridClient",
    "GridController",
    "GridLimits",
    "GridWorker",
    "JobError",
    "JobHandle",
    "__version__",
    "descriptors",
]
