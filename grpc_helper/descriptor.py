"""``RpcServiceDescriptor``: everything a server needs to host one versioned service."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc

from grpc_helper._access import Access, AccessSpec, access_by_method

if TYPE_CHECKING:  # grpc-stubs makes these generic; grpcio's classes are not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.ServerInterceptor


@dataclass(frozen=True)
class MethodInfo:
    """What the server knows of one method: its service, the API range it accepts, who may call it."""

    service: str
    supported_api_version: int
    current_api_version: int
    access: Access = Access.ANYONE


class _HandlerRecorder:
    """Stands in for a ``grpc.Server`` to learn what a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.service_name = ""
        self.handlers: dict[str, Handler] = {}

    def add_registered_method_handlers(self, service_name: str, handlers: Mapping[str, Handler]) -> None:
        self.service_name = service_name
        self.handlers = dict(handlers)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # Older generated code only calls this one; its service name is public on the generic handler.
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            if callable(name) and not self.service_name:
                self.service_name = name()


def _api_range(api_version: Any) -> tuple[int, int]:
    values = [int(v) for v in api_version.values() if int(v) > 0]
    if not values:
        raise ValueError(f"API version enum {api_version.DESCRIPTOR.full_name} has no non-zero value")
    return min(values), max(values)


def _package_identity(module: ModuleType) -> tuple[str, str]:
    title = getattr(module, "__title__", None)
    version = getattr(module, "__version__", None)
    if title and version:
        return str(title), str(version)
    top = module.__name__.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top, [])
    if dists:
        dist = dists[0]
        return str(title or dist), str(version or importlib.metadata.version(dist))
    return str(title or top), str(version or "unknown")


class RpcServiceDescriptor:
    """One service to host in an ``RpcServer``.

    :param module: the package implementing the service; its ``__title__``/``__version__`` (or its
        distribution's metadata) give the name and version shown by the info service.
    :param name: short name of the service, used in the info service and as the ``auto_client`` attribute.
    :param api_version: the generated API version enum: its lowest non-zero value is the oldest client
        version accepted, its highest value the current one.
    :param manager: the servicer instance (usually an ``RpcManager``) that implements the methods.
    :param register_method: the generated ``add_<Service>Servicer_to_server`` function.
    :param client_stub: the generated ``<Service>Stub`` class.
    :param access: who may call the service's methods: one ``Access`` rule for all of them, or a mapping from
        method names (as in the ``.proto``) to rules, ``"*"`` standing for the methods not named. The server
        enforces it before the manager runs. Default: ``Access.ANYONE``.

    Example::

        RpcServiceDescriptor(my_pkg, "my", MyApiVersion, MyManager(), add_MyServiceServicer_to_server, MyServiceStub,
                             access={"get": Access.AUTHENTICATED, "*": Access.ADMIN})
    """

    def __init__(
        self,
        module: ModuleType,
        name: str,
        api_version: Any,
        manager: Any,
        register_method: Callable[[Any, Any], None],
        client_stub: type,
        access: AccessSpec = Access.ANYONE,
    ) -> None:
        if not name or not name.isidentifier():
            raise ValueError(f"service name must be a Python identifier (it is a client attribute): {name!r}")
        self.module = module
        self.name = name
        self.api_version = api_version
        self.manager = manager
        self.register_method = register_method
        self.client_stub = client_stub
        self.supported_api_version, self.current_api_version = _api_range(api_version)
        self.package, self.version = _package_identity(module)
        recorder = _HandlerRecorder()
        register_method(manager, recorder)
        if not recorder.service_name:
            raise ValueError(f"{register_method.__name__} registered no gRPC service")
        #: Fully qualified gRPC service name, e.g. ``"grpc_helper.api.InfoService"``.
        self.full_name = recorder.service_name
        #: Method paths (``"/pkg.Service/method"``) served by this service.
        self.methods = tuple(f"/{self.full_name}/{m}" for m in recorder.handlers)
        #: Who may call each method (``{path: Access}``).
        self.access = access_by_method(access, {m: f"/{self.full_name}/{m}" for m in recorder.handlers})

    def method_infos(self) -> dict[str, MethodInfo]:
        """Per-method data for the server's interceptor, computed once at start-up."""
        return {
            path: MethodInfo(self.full_name, self.supported_api_version, self.current_api_version, self.access[path])
            for path in self.methods
        }

    def __repr__(self) -> str:
        return f"RpcServiceDescriptor({self.name!r}, {self.full_name}, api {self.supported_api_version}..{self.current_api_version})"
