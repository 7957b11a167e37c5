"""The logger service: loggers and their levels, read and changed remotely; per-service rolling log files.

Every hosted manager logs under ``grpc_helper.<service>``. See doc/logger.md.
"""

from grpc_helper.logger.manager import LogFiles, LoggerManager, service_logger

__all__ = ["LogFiles", "LoggerManager", "service_logger"]
