"""``GridController``: the controller role (status, stop/start workers, shutdown)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from grpc_helper import RpcClient
from grpc_helper.grid._failover import SyncClients
from grpc_helper.grid._session import API_VERSION, Endpoints
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc


class GridController:
    """Controller role: ``status()``, ``stop_worker(id)``, ``start_worker(command)``, ``shutdown(delay)``.

    ``status`` needs an authenticated caller, the others an admin (on a server with mTLS).

    ``endpoint`` is ``"host:port"``, or several servers of one grid (``"a:1,b:2"`` or a list): calls go to
    the first reachable one, in order, as ``GridClient``'s do (``endpoint`` tells which one is in use).
    ``status`` and ``stop_worker`` move to the next endpoint after a transport failure; ``start_worker`` only
    when it provably never reached a server (its connection could not be made): if the connection broke after
    the request left, it raises ``RpcException`` (``ERROR_RPC``) rather than spawn a second worker.
    ``shutdown`` stops the server in use and is never moved to another one (give the endpoint of the server
    to stop).
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 60.0,
        name: str = "grid-controller",
    ) -> None:
        self._endpoints = Endpoints(endpoint)
        self._timeout = timeout

        def make(host: str, port: int, budget: float) -> RpcClient:
            return RpcClient(
                host,
                port,
                {"ctl": (pb_grpc.GridControllerServiceStub, API_VERSION)},
                timeout=budget,
                name=name,
                credentials=credentials,
            )

        self._rpc = SyncClients(self._endpoints, make, timeout)

    @property
    def endpoint(self) -> str:
        """The grid server in use, ``host:port``."""
        return self._endpoints.target

    def status(self) -> dict[str, Any]:
        """Workers, queues per service, counters, sessions, spawned processes and limits (see doc/grid.md)."""
        return json.loads(self._rpc.call("ctl", "status", pb.StatusRequest()).json)  # type: ignore[no-any-return]

    def stop_worker(self, worker_id: int) -> dict[str, Any]:
        reply = self._rpc.call("ctl", "stop_worker", pb.WorkerRef(worker_id=worker_id))
        return json.loads(reply.json)  # type: ignore[no-any-return]

    def start_worker(self, command: str) -> pb.StartWorkerResponse:
        """``"<SERVER_ADDRESS> <CLIENT_DESCRIPTION> <SERVICE_ID> <SERVICE_VERSION>"``: spawn a worker on the server host."""
        return self._rpc.call("ctl", "start_worker", pb.StartWorkerRequest(command=command), once=True)  # type: ignore[no-any-return]

    def shutdown(self, delay: float = 0.0) -> pb.ShutdownResponse:
        """Shut the grid server in use down after ``delay`` seconds (0: the server's default); on the memory
        backend its pending jobs fail. Sent to that server only (several endpoints: never moved)."""
        request = pb.ShutdownRequest(delay=delay)
        return self._rpc.client().ctl.shutdown_server(request, timeout=self._timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> GridController:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
