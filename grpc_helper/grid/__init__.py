"""Compute grid: clients submit opaque jobs, remote workers run them, a controller steers; nothing lost."""

__title__ = "grpc-helper-grid"
__version__ = "1.0.0"
