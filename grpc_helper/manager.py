"""``RpcManager``: base class for the objects that implement a service."""

from __future__ import annotations

import threading

from grpc_helper._manager_base import ManagerBase
from grpc_helper.client import RpcClient


class RpcManager(ManagerBase[RpcClient]):
    """Base class for service implementations hosted by an ``RpcServer``.

    Combine it with the generated servicer::

        class MyManager(my_pb2_grpc.MyServiceServicer, RpcManager):
            def load(self) -> None:
                self.items = {}

            def get(self, request: my_pb2.Key, context: object = None) -> my_pb2.Item:
                with self.lock:
                    return self.items[request.key]

    Methods take ``(request, context)``, or ``(request)`` alone (declare ``context: object = None`` to keep the
    generated servicer's signature for mypy); raise ``RpcException`` to fail a call with a
    ``ResultCode``. ``self.client`` is an ``RpcClient`` to the hosting server's services; ``self.logger`` logs
    under ``grpc_helper.<service name>``.
    """

    def __init__(self) -> None:
        super().__init__()
        #: Re-entrant lock to protect the manager's state from concurrent calls.
        self.lock = threading.RLock()

    def load(self) -> None:
        """Called once every service of the server is serving; raise to make the server start fail."""

    def begin_shutdown(self) -> None:
        """Called when server shutdown starts (health is NOT_SERVING), before in-flight calls get their grace
        period: end long-lived streams here (wake followers, tell peers to stop) and refuse new work."""

    def shutdown(self) -> None:
        """Called at server shutdown, once in-flight calls are finished (or the grace period is over)."""
