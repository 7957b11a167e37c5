"""grpc-helper: versioned gRPC services in a few lines."""

__title__ = "grpc-helper"
__version__ = "1.0.0"
