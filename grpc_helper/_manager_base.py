"""What ``RpcManager`` and ``AsyncRpcManager`` share: the logger, the hosting server's client, attachment."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C")


class ManagerBase(Generic[C]):
    """Base of both manager classes; the server attaches its client (sync or asyncio, matching the manager) and
    names the logger after the service before ``load()`` runs."""

    #: True for managers whose methods and hooks are coroutines (they get the asyncio client).
    is_async = False

    def __init__(self) -> None:
        #: Logger of this manager: ``grpc_helper.<service name>`` once hosted (before: after the class).
        self.logger = logging.getLogger(f"grpc_helper.{type(self).__name__}")
        self._client: Callable[[], C] | None = None

    @property
    def client(self) -> C:
        """The hosting server's client to every hosted service (to call sibling services); set before ``load()``."""
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__} is not hosted by a running server yet")
        return self._client()

    def _attach(self, client: Callable[[], C], service: str) -> None:
        """Called by the hosting server: ``client()`` gives its client (made on first use)."""
        self._client = client
        self.logger = logging.getLogger(f"grpc_helper.{service}")
