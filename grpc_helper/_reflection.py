"""Server reflection under both service names clients probe: ``grpc.reflection.v1.ServerReflection`` (tried
first by current grpcurl, grpc_cli, Postman...) and ``grpc.reflection.v1alpha.ServerReflection``.

grpcio-reflection only ships v1alpha; v1's messages are the same on the wire (the v1 proto is v1alpha's,
renamed), so one servicer answers both. Listing shows v1alpha (its descriptors are in the pool), as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer as AsyncReflectionServicer

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME


def enable_reflection(service_names: Sequence[str], server: Any) -> None:
    """Serve reflection (v1 and v1alpha) for ``service_names`` (plus reflection itself) on a sync or aio server."""
    names = [*service_names, V1ALPHA_SERVICE_NAME]
    aio = isinstance(server, grpc.aio.Server)
    servicer: Any = AsyncReflectionServicer(names) if aio else reflection.ReflectionServicer(names)
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": method}),))
