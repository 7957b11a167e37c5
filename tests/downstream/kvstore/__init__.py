"""kvstore: a downstream grpc-helper service."""

__title__ = "kvstore"
__version__ = "0.1.0"
