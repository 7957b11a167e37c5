"""``RpcManager``: base class for the objects that implement a service."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpc_helper.client import RpcClient


class RpcManager:
    """Base class for service implementations hosted by an ``RpcServer``.

    Combine it with the generated servicer::

        class MyManager(my_pb2_grpc.MyServiceServicer, RpcManager):
            def load(self) -> None:
                self.items = {}

            def get(self, request: my_pb2.Key) -> my_pb2.Item:
                with self.lock:
                    return self.items[request.key]

    Methods take ``(request)`` or ``(request, context)``; raise ``RpcException`` to fail a call with a
    ``ResultCode``.
    """

    def __init__(self) -> None:
        #: Logger named after the manager class.
        self.logger = logging.getLogger(type(self).__name__)
        #: Re-entrant lock to protect the manager's state from concurrent calls.
        self.lock = threading.RLock()
        self._client: RpcClient | None = None

    @property
    def client(self) -> RpcClient:
        """The hosting server's ``auto_client`` (to call sibling services); set before ``load()`` runs."""
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__} is not hosted by a running server yet")
        return self._client

    def _attach(self, client: RpcClient) -> None:
        self._client = client

    def load(self) -> None:
        """Called once every service of the server is serving; raise to make the server start fail."""

    def begin_shutdown(self) -> None:
        """Called when server shutdown starts (health is NOT_SERVING), before in-flight calls get their grace
        period: end long-lived streams here (wake followers, tell peers to stop) and refuse new work."""

    def shutdown(self) -> None:
        """Called at server shutdown, once in-flight calls are finished (or the grace period is over)."""
