"""``GridController``: the controller role (status, stop/start workers, shutdown)."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import grpc

from grpc_helper import RpcClient
from grpc_helper.grid._session import API_VERSION
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.endpoint import split_endpoint


class GridController:
    """Controller role: ``status()``, ``stop_worker(id)``, ``start_worker(command)``, ``shutdown(delay)``.

    ``status`` needs an authenticated caller, the others an admin (on a server with mTLS).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 60.0,
        name: str = "grid-controller",
    ) -> None:
        host, port = split_endpoint(endpoint)
        self._timeout = timeout
        self._rpc = RpcClient(
            host,
            port,
            {"ctl": (pb_grpc.GridControllerServiceStub, API_VERSION)},
            timeout=timeout,
            name=name,
            credentials=credentials,
        )

    def status(self) -> dict[str, Any]:
        """Workers, queues per service, counters, sessions, spawned processes and limits (see doc/grid.md)."""
        return json.loads(self._rpc.ctl.status(pb.StatusRequest(), timeout=self._timeout).json)  # type: ignore[no-any-return]

    def stop_worker(self, worker_id: int) -> dict[str, Any]:
        reply = self._rpc.ctl.stop_worker(pb.WorkerRef(worker_id=worker_id), timeout=self._timeout)
        return json.loads(reply.json)  # type: ignore[no-any-return]

    def start_worker(self, command: str) -> pb.StartWorkerResponse:
        """``"<SERVER_ADDRESS> <CLIENT_DESCRIPTION> <SERVICE_ID> <SERVICE_VERSION>"``: spawn a worker on the server host."""
        return self._rpc.ctl.start_worker(pb.StartWorkerRequest(command=command), timeout=self._timeout)  # type: ignore[no-any-return]

    def shutdown(self, delay: float = 0.0) -> pb.ShutdownResponse:
        """Shut the grid down after ``delay`` seconds (0: the server's default); pending jobs fail."""
        return self._rpc.ctl.shutdown_server(pb.ShutdownRequest(delay=delay), timeout=self._timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> GridController:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
