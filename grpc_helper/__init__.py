"""grpc-helper: versioned gRPC services in a few lines.

Host services with ``RpcServer`` (info, health, reflection, API-version checks and debug dumps included),
call them with ``RpcClient``; the asyncio twins are ``AsyncRpcServer`` and ``AsyncRpcClient``. Every server
also hosts the server, config, logger and events services (``BuiltinServices``); ``RpcCliParser`` gives a
server program its conventional command line.
"""

__title__ = "grpc-helper"
__version__ = "1.0.0"

from grpc_helper._access import Access
from grpc_helper._builtin import BuiltinServices
from grpc_helper._identity import Identity, current_identity
from grpc_helper._limits import CallLimits
from grpc_helper._server_cli import RpcCliParser
from grpc_helper.aio import AsyncRpcClient, AsyncRpcManager, AsyncRpcServer
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.client import RpcClient
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.manager import RpcManager
from grpc_helper.server import RpcServer

__all__ = [
    "Access",
    "AsyncRpcClient",
    "AsyncRpcManager",
    "AsyncRpcServer",
    "BuiltinServices",
    "CallLimits",
    "Identity",
    "ResultCode",
    "RpcCliParser",
    "RpcClient",
    "RpcException",
    "RpcManager",
    "RpcServer",
    "RpcServiceDescriptor",
    "__version__",
    "current_identity",
]
