"""The server service: remote shutdown (administrators only). See doc/services.md."""

from grpc_helper.server_service.manager import MAX_DELAY, ServerManager

__all__ = ["MAX_DELAY", "ServerManager"]
