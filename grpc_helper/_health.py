"""The standard health service (``grpc.health.v1.Health``) with ``List`` answered, for both servers.

grpcio-health-checking's servicers answer ``Check`` and ``Watch`` but leave ``List`` UNIMPLEMENTED; these
subclasses keep their own record of the statuses they were given (no private state of the base class is
read) and answer ``List`` from it.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Statuses:
    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.final = False

    def record(self, service: str, status: int) -> None:
        if not self.final:
            self.statuses[service] = status

    def shut_down(self) -> None:
        self.statuses = dict.fromkeys(self.statuses, _NOT_SERVING)
        self.final = True

    def listing(self) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service, status in self.statuses.items():
            response.statuses[service].status = status  # type: ignore[assignment]
        return response


class HealthServicer(health.HealthServicer):  # type: ignore[misc]
    """Sync health servicer answering ``List`` too."""

    def __init__(self) -> None:
        super().__init__()
        self._record = _Statuses()

    def set(self, service: str, status: Any) -> None:
        self._record.record(service, status)
        super().set(service, status)

    def enter_graceful_shutdown(self) -> None:
        super().enter_graceful_shutdown()
        self._record.shut_down()

    def List(self, request: Any, context: Any) -> health_pb2.HealthListResponse:
        return self._record.listing()


class AsyncHealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """asyncio health servicer answering ``List`` too."""

    def __init__(self) -> None:
        super().__init__()
        self._record = _Statuses()

    async def set(self, service: str, status: Any) -> None:
        self._record.record(service, status)
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._record.shut_down()

    async def List(self, request: Any, context: Any) -> health_pb2.HealthListResponse:
        return self._record.listing()
