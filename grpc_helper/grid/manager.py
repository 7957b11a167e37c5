"""Grid servicers (client, worker and controller roles) over one shared ``Grid``, and ``descriptors()``.

The servicers are asyncio managers: host them on an ``AsyncRpcServer`` (``grid serve`` does), with the
options of ``GridLimits.server_options()``. They translate between the wire and the scheduler and wait on
events; the state and its rules live in the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

import grpc_helper.grid as grid_pkg
from grpc_helper import Access, AsyncRpcManager, ResultCode, RpcException, RpcServiceDescriptor
from grpc_helper.grid._backend import Backend
from grpc_helper.grid._bridge import in_event_loop, sync_method
from grpc_helper.grid._errors import grid_errors
from grpc_helper.grid._identity import caller
from grpc_helper.grid._wire import job_result, result_batch, server_message, worker_results
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import GridParamError, Worker
from grpc_helper.grid.service import Grid, waker
from grpc_helper.grid.spawner import DEFAULT_HANDLER, WorkerSpec

#: Longest shutdown delay accepted (seconds).
MAX_SHUTDOWN_DELAY = 3600.0
_MAX_ACK = 100_000
_MAX_WAITING = 1_000_000


class _GridManager(AsyncRpcManager):
    """Base of the grid's servicers: asyncio managers, whose hooks also run from a sync server (``_bridge``)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__()
        self.grid = grid
        self.scheduler = grid.scheduler

    def load(self) -> Awaitable[None] | None:  # type: ignore[override]
        if in_event_loop():
            return self.grid.start()
        self.grid.bridge().run(self.grid.start())
        return None

    def begin_shutdown(self) -> Awaitable[Any] | None:  # type: ignore[override]
        # Workers get STOP and clients their pending jobs' failures while their streams are still open.
        if in_event_loop():
            return self.grid.close()
        self.grid.bridge().run(self.grid.close())
        return None

    def shutdown(self) -> Awaitable[Any] | None:  # type: ignore[override]
        if in_event_loop():
            return self.grid.close()
        self.grid.bridge().run(self.grid.close())
        self.grid.stop_bridge()
        return None


class GridClientManager(pb_grpc.GridClientServiceServicer, _GridManager):
    """Client role: submit, results stream, ack, get_result, cancel, close_session."""

    async def submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:
        with grid_errors():
            ids = self.scheduler.submit(
                request.session, caller(), (request.service_id, request.service_version), list(request.payloads)
            )
        await self.grid.durable()  # accepted = stored: the ids are answered once the backend has the jobs
        return pb.SubmitResponse(job_ids=ids)

    async def results(self, request: pb.ResultsRequest, context: Any) -> AsyncIterator[pb.ResultBatch]:
        session = request.session
        if len(request.waiting) > _MAX_WAITING:
            raise RpcException(f"at most {_MAX_WAITING} waiting jobs per stream", ResultCode.ERROR_PARAM_INVALID)
        event = asyncio.Event()
        with grid_errors():
            shared = self.grid.backend.shared
            token, unknown = self.scheduler.open_stream(session, caller(), () if shared else request.waiting, waker(event))
        try:
            if shared:
                # The session may come from another server: this one becomes its home, and holds its jobs (the
                # session exists here first, so that none completing meanwhile is missed).
                with grid_errors():
                    adopted = await self.grid.backend.adopt(session, caller())
                    unknown = self.scheduler.adopt(session, caller(), adopted or (), request.waiting)
            # Always a first message: the client knows the stream is open (and what the server forgot).
            yield result_batch(unknown)
            while True:
                event.clear()
                with grid_errors():
                    batch = self.scheduler.take_results(session, token)
                if batch is None:
                    return
                if batch:
                    await self.grid.durable()  # a result leaves only once stored (never sent, then forgotten)
                    yield result_batch(batch)
                else:
                    await event.wait()
        finally:
            self.scheduler.close_stream(session, token)

    async def ack(self, request: pb.AckRequest, context: Any) -> pb.AckResponse:
        if len(request.job_ids) > _MAX_ACK:
            raise RpcException(f"at most {_MAX_ACK} job ids per ack", ResultCode.ERROR_PARAM_INVALID)
        with grid_errors():
            self.scheduler.ack(request.session, caller(), request.job_ids)
        return pb.AckResponse()

    async def get_result(self, request: pb.JobRef, context: Any) -> pb.JobResult:
        with grid_errors():
            return job_result(self.scheduler.get_result(request.job_id, request.session, caller()))

    async def cancel(self, request: pb.JobRef, context: Any) -> pb.JobResult:
        with grid_errors():
            return job_result(self.scheduler.cancel(request.job_id, request.session, caller()))

    async def close_session(self, request: pb.SessionRef, context: Any) -> pb.CloseSessionResponse:
        with grid_errors():
            return pb.CloseSessionResponse(cancelled=self.scheduler.close_session(request.session, caller()))


class GridWorkerManager(pb_grpc.GridWorkerServiceServicer, _GridManager):
    """Worker role: one bidirectional stream per worker."""

    async def work(
        self, request_iterator: AsyncIterator[pb.WorkerMessage], context: Any
    ) -> AsyncIterator[pb.ServerMessage]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "register":
            raise RpcException("the first message of a worker stream must be 'register'", ResultCode.ERROR_PARAM_INVALID)
        reg = first.register
        event = asyncio.Event()
        with grid_errors():
            worker = self.scheduler.register_worker(
                (reg.service_id, reg.service_version),
                owner=caller(),
                description=reg.description,
                concurrency=reg.concurrency or 1,
                prefetch=reg.prefetch,
                pid=reg.pid,
                host=reg.host,
                peer=context.peer(),
                wake=waker(event),
            )
        self.logger.info("worker %d registered: %s for %s/%s", worker.id, worker.description, *worker.key)
        reader = asyncio.get_running_loop().create_task(self._read(worker, request_iterator))
        try:
            limits = self.grid.limits
            yield pb.ServerMessage(
                registered=pb.Registered(
                    worker_id=worker.id,
                    heartbeat_interval=limits.heartbeat_interval,
                    max_message_bytes=limits.max_message_bytes,
                )
            )
            while True:
                event.clear()
                out = self.scheduler.take_for_worker(worker)
                if out is None:
                    break
                if out.stop or out.jobs:
                    yield server_message(out)
                else:
                    await event.wait()
        finally:
            if not reader.done():
                # Messages the worker sent before it vanished (e.g. the start of the job that killed it) may
                # still be buffered: let the reader take them before the loss is judged.
                await asyncio.wait({reader}, timeout=0.05)
            reader.cancel()
            self.scheduler.worker_gone(worker, "stream closed")
            self.logger.info("worker %d left: %s", worker.id, worker.reason)

    async def _read(self, worker: Worker, requests: AsyncIterator[pb.WorkerMessage]) -> None:
        scheduler = self.scheduler
        try:
            async for message in requests:
                kind = message.WhichOneof("msg")
                if kind == "results":
                    results = message.results
                    scheduler.worker_message(worker, worker_results(results), results.started)
                elif kind == "heartbeat":
                    scheduler.heartbeat(worker)
                elif kind == "give_back":
                    scheduler.give_back(worker, message.give_back.job_ids)
                elif kind == "drain":
                    scheduler.drain(worker)
                elif kind == "tune":
                    scheduler.set_prefetch(worker, message.tune.prefetch)
        except (grpc.RpcError, asyncio.CancelledError):
            pass  # the stream ended: handled below like any disconnect
        except Exception:
            self.logger.exception("worker %d: bad message", worker.id)
        finally:
            # The request stream also ends quietly when the peer dies: a drain beforehand tells them apart.
            scheduler.worker_gone(worker, "request stream ended")


class GridControllerManager(pb_grpc.GridControllerServiceServicer, _GridManager):
    """Controller role: status, stop_worker, start_worker, shutdown."""

    async def status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        status = self.grid.status()
        wide = await self.grid.grid_status()
        if wide is not None:
            status["grid"] = wide
        return pb.StatusResponse(json=json.dumps(status))

    async def stop_worker(self, request: pb.WorkerRef, context: Any) -> pb.StatusResponse:
        with grid_errors():
            worker = self.scheduler.stop_worker(request.worker_id)
        return pb.StatusResponse(json=json.dumps({"worker_id": worker.id, "state": worker.state.value}))

    async def start_worker(self, request: pb.StartWorkerRequest, context: Any) -> pb.StartWorkerResponse:
        try:
            spec = WorkerSpec.parse(request.command)
        except ValueError as exc:
            raise RpcException(str(exc), ResultCode.ERROR_PARAM_INVALID) from None
        if self.scheduler.closed:
            raise RpcException("grid is shut down", ResultCode.ERROR_STREAM_SHUTDOWN)
        try:
            pid, handler = await asyncio.to_thread(self.grid.spawner.spawn, spec)
        except OverflowError as exc:
            raise RpcException(str(exc), ResultCode.ERROR_RESOURCE_EXHAUSTED) from None
        except (OSError, RuntimeError) as exc:
            raise RpcException(f"cannot start worker: {exc}", ResultCode.ERROR_STATE_UNEXPECTED) from None
        return pb.StartWorkerResponse(pid=pid, handler=handler)

    async def shutdown_server(self, request: pb.ShutdownRequest, context: Any) -> pb.ShutdownResponse:
        delay = request.delay
        if not math.isfinite(delay) or not 0 <= delay <= MAX_SHUTDOWN_DELAY:
            with grid_errors():
                raise GridParamError(f"delay must be a number of seconds in 0..{MAX_SHUTDOWN_DELAY:g} (got {delay})")
        if self.scheduler.closed:
            raise RpcException("grid is already shut down", ResultCode.ERROR_STREAM_SHUTDOWN)
        delay = delay or self.grid.limits.shutdown_delay
        pending = self.scheduler.pending_jobs()
        self.logger.info("shutdown requested: in %gs, %d job(s) pending", delay, pending)
        self.grid.shutdown_later(delay)
        return pb.ShutdownResponse(delay=delay, jobs_pending=pending)


def descriptors(
    *,
    limits: GridLimits | None = None,
    backend: Backend | None = None,
    handlers: Mapping[str, str] | None = None,
    default_handler: str = DEFAULT_HANDLER,
    worker_args: Sequence[str] = (),
    on_shutdown: Callable[[], Any] | None = None,
    workers: Access = Access.AUTHENTICATED,
    grid: Grid | None = None,
) -> list[RpcServiceDescriptor]:
    """The grid's three services (``grid_client``, ``grid_worker``, ``grid_controller``) for an ``AsyncRpcServer``.

    :param limits: quotas, payload limit, retry policy, expiry and heartbeat timings.
    :param backend: where accepted jobs and undelivered results are stored (``grpc_helper.grid.backend(...)``);
        default: in memory only (lost when the process exits). The grid closes it at shutdown.
    :param handlers: service_id -> ``"package.module:function"`` run by workers spawned with ``start_worker``.
    :param default_handler: handler of spawned workers for services not in ``handlers`` (echo).
    :param worker_args: extra ``python -m grpc_helper.grid worker`` options for spawned workers (e.g. TLS files).
    :param on_shutdown: called (awaited if it returns an awaitable) after the controller's ``shutdown`` closed
        the grid: stop the hosting server there.
    :param workers: who may register as a worker (an ``Access`` rule; default: authenticated identities).
    :param grid: share an existing ``Grid`` (the other parameters are then ignored).

    Controller methods other than ``status`` are admin-only. Host with ``options=limits.server_options()`` so
    that gRPC's message limit follows ``max_payload_bytes``. The ``Grid`` is ``descriptors[0].manager.grid``.
    """
    grid = grid or Grid(
        limits, backend=backend, handlers=handlers, default_handler=default_handler, worker_args=worker_args, on_shutdown=on_shutdown
    )
    version = pb.GridApiVersion
    return [
        RpcServiceDescriptor(
            grid_pkg,
            "grid_client",
            version,
            GridClientManager(grid),
            _register(pb_grpc.GridClientServiceServicer, pb_grpc.add_GridClientServiceServicer_to_server, _CLIENT),
            pb_grpc.GridClientServiceStub,
            access=Access.ANYONE,  # sessions belong to their caller's identity (checked by the scheduler)
        ),
        RpcServiceDescriptor(
            grid_pkg,
            "grid_worker",
            version,
            GridWorkerManager(grid),
            _register(pb_grpc.GridWorkerServiceServicer, pb_grpc.add_GridWorkerServiceServicer_to_server, _WORKER),
            pb_grpc.GridWorkerServiceStub,
            access=workers,
        ),
        RpcServiceDescriptor(
            grid_pkg,
            "grid_controller",
            version,
            GridControllerManager(grid),
            _register(
                pb_grpc.GridControllerServiceServicer, pb_grpc.add_GridControllerServiceServicer_to_server, _CONTROLLER
            ),
            pb_grpc.GridControllerServiceStub,
            access={"status": Access.AUTHENTICATED, "*": Access.ADMIN},
        ),
    ]


#: Method shapes of each service, for the sync wrappers.
_CLIENT = {"submit": "unary", "results": "stream", "ack": "unary", "get_result": "unary", "cancel": "unary",
           "close_session": "unary"}
_WORKER = {"work": "bidi"}
_CONTROLLER = {"status": "unary", "stop_worker": "unary", "start_worker": "unary", "shutdown_server": "unary"}


def _register(
    servicer_class: type, add: Callable[[Any, Any], None], shapes: dict[str, str]
) -> Callable[[_GridManager, Any], None]:
    """Register the asyncio servicer on an asyncio server, thread-side wrappers of it on a sync server."""

    def register(manager: _GridManager, server: Any) -> None:
        if not isinstance(server, grpc.Server):
            add(manager, server)
            return
        wrapper = servicer_class()
        for name, shape in shapes.items():
            setattr(wrapper, name, sync_method(manager.grid.bridge, getattr(manager, name), shape))
        add(wrapper, server)

    register.__name__ = add.__name__
    return register
