"""Job runner service: run Linux processes remotely over mTLS, stream their logs, cgroup limits, durable state.

Host it with :func:`descriptor` in an ``AsyncRpcServer`` (mTLS credentials required, see
``grpc_helper.certs``), or run ``python -m grpc_helper.jobs serve``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpc_helper.jobs.limits import JobsLimits

__title__ = "grpc-helper-jobs"
__version__ = "1.0.0"

if TYPE_CHECKING:
    from grpc_helper import RpcServiceDescriptor

__all__ = ["JobsLimits", "__title__", "__version__", "default_state_dir", "descriptor"]


def default_state_dir() -> Path:
    """$GRPC_HELPER_JOBS_DIR, else ~/.local/state/grpc-helper/jobs."""
    import os

    env = os.environ.get("GRPC_HELPER_JOBS_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "grpc-helper" / "jobs"


def descriptor(state_dir: Path | str, admins: Iterable[str] = (), **options: Any) -> RpcServiceDescriptor:
    """The Jobs service, ready for ``AsyncRpcServer(port, [descriptor(...)], credentials=<mTLS>)``.

    ``state_dir`` holds the SQLite records and log files (one server at a time: it is locked while served).
    The server's ``admins`` see every job; ``admins`` adds certificate common names that do, for this service
    only. ``options`` go
    to :class:`grpc_helper.jobs.manager.JobsManager` (``cgroups``, ``cgroup_parent``, ``stop_grace``, and
    ``limits=JobsLimits(...)`` or its fields: ``max_running``, ``max_running_per_owner``, ``max_log_bytes``,
    ``min_free_bytes``, ``keep_age``, ``keep_count``). Every method requires ``Access.AUTHENTICATED``: calls
    without a verified client certificate are refused, so the service stays safe on a plaintext server (it is
    just unusable there). The manager is an
    ``AsyncRpcManager``: it needs an asyncio server.
    """
    from grpc_helper.jobs.manager import JobsManager

    return _described(JobsManager(state_dir, admins, **options))


def _described(manager: Any) -> RpcServiceDescriptor:
    import grpc_helper.jobs as package
    from grpc_helper import Access, RpcServiceDescriptor
    from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc

    return RpcServiceDescriptor(
        package, "jobs", jobs_pb2.JobsApiVersion, manager, jobs_pb2_grpc.add_JobsServicer_to_server,
        jobs_pb2_grpc.JobsStub, access=Access.AUTHENTICATED,
    )

