"""The info service every server hosts, and its CLI (``python -m grpc_helper.info``)."""

from grpc_helper.info.service import InfoManager, info_descriptor, service_info

__all__ = ["InfoManager", "info_descriptor", "service_info"]
