"""``InfoService``: name, version and API range of every hosted service (itself included)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc_helper
from grpc_helper.api import info_pb2, info_pb2_grpc
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException, bounded
from grpc_helper.manager import RpcManager

INFO_SERVICE_NAME = "info"


def service_info(descriptor: RpcServiceDescriptor) -> info_pb2.ServiceInfo:
    """The ``ServiceInfo`` describing one hosted service."""
    return info_pb2.ServiceInfo(
        name=descriptor.name,
        version=descriptor.version,
        current_api_version=descriptor.current_api_version,
        supported_api_version=descriptor.supported_api_version,
        package=descriptor.package,
        full_name=descriptor.full_name,
    )


class InfoManager(info_pb2_grpc.InfoServiceServicer, RpcManager):
    """Serves ``InfoService.get`` from the server's descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[str, info_pb2.ServiceInfo] = {}

    def publish(self, descriptors: Sequence[RpcServiceDescriptor]) -> None:
        self._items = {d.name: service_info(d) for d in descriptors}

    def get(self, request: info_pb2.InfoFilter, context: object = None) -> info_pb2.MultiServiceInfo:
        unknown = [n for n in request.names if n not in self._items]
        if unknown:
            shown = ", ".join(bounded(n, 40, quote=False) for n in unknown[:5])
            if len(unknown) > 5:
                shown += f" and {len(unknown) - 5} more"
            raise RpcException(
                f"unknown service(s): {shown} (hosted: {', '.join(self._items)})", ResultCode.ERROR_ITEM_UNKNOWN
            )
        names = list(request.names) or list(self._items)
        return info_pb2.MultiServiceInfo(items=[self._items[n] for n in names])


def info_descriptor(manager: InfoManager | None = None) -> RpcServiceDescriptor:
    """Descriptor of the info service (hosted by every ``RpcServer``)."""
    return RpcServiceDescriptor(
        grpc_helper,
        INFO_SERVICE_NAME,
        info_pb2.InfoApiVersion,
        manager or InfoManager(),
        info_pb2_grpc.add_InfoServiceServicer_to_server,
        info_pb2_grpc.InfoServiceStub,
    )
