"""Grid servicers (client, worker and controller roles) over one shared ``Grid``, and ``descriptors()``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import grpc

import grpc_helper.grid as grid_pkg
from grpc_helper import ResultCode, RpcException, RpcManager, RpcServiceDescriptor
from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.api import grid_pb2_grpc as pb_grpc
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import (
    GridClosedError,
    GridError,
    GridLimitError,
    GridParamError,
    GridUnknownError,
    JobView,
    Worker,
    WorkerResult,
)
from grpc_helper.grid.scheduler import Scheduler
from grpc_helper.grid.spawner import DEFAULT_HANDLER, WorkerSpawner, WorkerSpec

_log = logging.getLogger("grpc_helper.grid")

_RC_BY_ERROR: dict[type[GridError], int] = {
    GridLimitError: ResultCode.ERROR_RESOURCE_EXHAUSTED,
    GridParamError: ResultCode.ERROR_PARAM_INVALID,
    GridUnknownError: ResultCode.ERROR_ITEM_UNKNOWN,
    GridClosedError: ResultCode.ERROR_STREAM_SHUTDOWN,
}


@contextmanager
def _grid_errors() -> Iterator[None]:
    """The one place where scheduler errors become ``RpcException``\\ s (hence gRPC statuses)."""
    try:
        yield
    except GridError as exc:
        raise RpcException(str(exc), _RC_BY_ERROR.get(type(exc), ResultCode.ERROR)) from None


def job_result(view: JobView) -> pb.JobResult:
    return pb.JobResult(
        job_id=view.job_id,
        state=int(view.state),  # type: ignore[arg-type]
        data=view.data,
        error=view.error,
        attempts=view.attempts,
        rc=view.rc,
    )


class Grid:
    """State shared by the three grid services: the scheduler, spawned workers, delayed shutdown."""

    def __init__(
        self,
        limits: GridLimits | None = None,
        *,
        handlers: Mapping[str, str] | None = None,
        default_handler: str = DEFAULT_HANDLER,
        worker_args: Sequence[str] = (),
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.scheduler = Scheduler(limits)
        self.limits = self.scheduler.limits
        self.spawner = WorkerSpawner(handlers, default_handler=default_handler, worker_args=worker_args)
        self.on_shutdown = on_shutdown
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        self.scheduler.start()

    def close(self) -> int:
        """Fail jobs not done (reported to their clients), stop workers (spawned ones included). Idempotent."""
        failed = self.scheduler.close()
        self.spawner.stop_all()
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        self._closed.set()
        if failed:
            _log.info("grid closed: %d job(s) not done were failed", failed)
        return failed

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def shutdown_later(self, delay: float) -> None:
        """Close the grid (then call ``on_shutdown``) after ``delay`` seconds, so the caller gets its answer."""
        with self._lock:
            if self._timer is not None or self._closed.is_set():
                return
            self._timer = threading.Timer(delay, self._shutdown_now)
            self._timer.name = "grid-shutdown"
            self._timer.daemon = True
            self._timer.start()

    def _shutdown_now(self) -> None:
        self.close()
        if self.on_shutdown is not None:
            self.on_shutdown()

    def status(self) -> dict[str, Any]:
        status = self.scheduler.status()
        status["spawned"] = self.spawner.status()
        status["limits"] = self.limits.as_dict()
        return status


class _GridManager(RpcManager):
    def __init__(self, grid: Grid) -> None:
        super().__init__()
        self.grid = grid
        self.scheduler = grid.scheduler

    def load(self) -> None:
        self.grid.start()

    def begin_shutdown(self) -> None:
        # Workers get STOP and clients their pending jobs' failures while their streams are still open.
        self.grid.close()

    def shutdown(self) -> None:
        self.grid.close()


class GridClientManager(pb_grpc.GridClientServiceServicer, _GridManager):
    """Client role: submit, results stream, get_result, cancel."""

    def submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.SubmitResponse:
        with _grid_errors():
            ids = self.scheduler.submit(
                request.session, (request.service_id, request.service_version), list(request.payloads)
            )
        return pb.SubmitResponse(job_ids=ids)

    def results(self, request: pb.ResultsRequest, context: grpc.ServicerContext) -> Iterator[pb.ResultBatch]:
        session = request.session
        with _grid_errors():
            if not session:
                raise GridParamError("session is required")
            token = self.scheduler.open_stream(session)
        # Wakes the blocked generator as soon as the client goes away (or the server stops).
        context.add_callback(lambda: self.scheduler.close_stream(session, token))
        try:
            while True:
                with _grid_errors():
                    batch = self.scheduler.next_results(session, token)
                if batch is None:
                    return
                yield pb.ResultBatch(results=[job_result(view) for view in batch])
        finally:
            self.scheduler.close_stream(session, token)

    def get_result(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobResult:
        with _grid_errors():
            return job_result(self.scheduler.get_result(request.job_id, request.session))

    def cancel(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobResult:
        with _grid_errors():
            return job_result(self.scheduler.cancel(request.job_id, request.session))


class GridWorkerManager(pb_grpc.GridWorkerServiceServicer, _GridManager):
    """Worker role: one bidirectional stream per worker."""

    def work(
        self, request_iterator: Iterator[pb.WorkerMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerMessage]:
        first = next(request_iterator, None)
        if first is None:
            return
        if first.WhichOneof("msg") != "register":
            raise RpcException("the first message of a worker stream must be 'register'", ResultCode.ERROR_PARAM_INVALID)
        reg = first.register
        with _grid_errors():
            worker = self.scheduler.register_worker(
                (reg.service_id, reg.service_version),
                description=reg.description,
                concurrency=reg.concurrency or 1,
                prefetch=reg.prefetch,
                pid=reg.pid,
                host=reg.host,
                peer=context.peer(),
            )
        self.logger.info("worker %d registered: %s for %s/%s", worker.id, reg.description, *worker.key)
        # A disconnect (process killed, network cut) is seen at once: its leased jobs go back to the queue.
        context.add_callback(lambda: self.scheduler.worker_gone(worker, "disconnected"))
        reader = threading.Thread(
            target=self._read, args=(worker, request_iterator), name=f"grid-worker-{worker.id}", daemon=True
        )
        reader.start()
        try:
            yield pb.ServerMessage(
                registered=pb.Registered(worker_id=worker.id, heartbeat_interval=self.grid.limits.heartbeat_interval)
            )
            while (out := self.scheduler.next_for_worker(worker)) is not None:
                if out.stop:
                    yield pb.ServerMessage(command=pb.WorkerCommand(command=pb.WORKER_COMMAND_STOP))
                elif out.jobs:
                    jobs = [pb.Job(job_id=d.job_id, attempt=d.attempt, data=d.data) for d in out.jobs]
                    yield pb.ServerMessage(jobs=pb.JobBatch(jobs=jobs))
        finally:
            self.scheduler.worker_gone(worker, "stream closed")
            reader.join(timeout=5)
            self.logger.info("worker %d left: %s", worker.id, worker.reason)

    def _read(self, worker: Worker, requests: Iterator[pb.WorkerMessage]) -> None:
        scheduler = self.scheduler
        try:
            for message in requests:
                kind = message.WhichOneof("msg")
                if kind == "results":
                    scheduler.worker_results(
                        worker,
                        [WorkerResult(r.job_id, r.attempt, r.ok, r.data, r.error) for r in message.results.results],
                    )
                elif kind == "heartbeat":
                    scheduler.heartbeat(worker)
                elif kind == "give_back":
                    scheduler.give_back(worker, list(message.give_back.job_ids))
                elif kind == "drain":
                    scheduler.drain(worker)
        except grpc.RpcError:
            pass  # the stream was cancelled: handled below like any disconnect
        except Exception:
            self.logger.exception("worker %d: bad message", worker.id)
        finally:
            # The request stream also ends quietly when the peer dies: a drain beforehand tells them apart.
            scheduler.worker_gone(worker, "request stream ended")


class GridControllerManager(pb_grpc.GridControllerServiceServicer, _GridManager):
    """Controller role: status, stop_worker, start_worker, shutdown."""

    def status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        return pb.StatusResponse(json=json.dumps(self.grid.status()))

    def stop_worker(self, request: pb.WorkerRef, context: grpc.ServicerContext) -> pb.StatusResponse:
        with _grid_errors():
            worker = self.scheduler.stop_worker(request.worker_id)
        return pb.StatusResponse(json=json.dumps({"worker_id": worker.id, "state": worker.state.value}))

    def start_worker(self, request: pb.StartWorkerRequest, context: grpc.ServicerContext) -> pb.StartWorkerResponse:
        try:
            spec = WorkerSpec.parse(request.command)
        except ValueError as exc:
            raise RpcException(str(exc), ResultCode.ERROR_PARAM_INVALID) from None
        if self.scheduler.closed:
            raise RpcException("grid is shut down", ResultCode.ERROR_STREAM_SHUTDOWN)
        try:
            pid, handler = self.grid.spawner.spawn(spec)
        except (OSError, RuntimeError) as exc:
            raise RpcException(f"cannot start worker: {exc}", ResultCode.ERROR_STATE_UNEXPECTED) from None
        return pb.StartWorkerResponse(pid=pid, handler=handler)

    def shutdown_server(self, request: pb.ShutdownRequest, context: grpc.ServicerContext) -> pb.ShutdownResponse:
        if self.scheduler.closed:
            raise RpcException("grid is already shut down", ResultCode.ERROR_STATE_UNEXPECTED)
        delay = request.delay if request.delay > 0 else self.grid.limits.shutdown_delay
        pending = self.scheduler.pending_jobs()
        self.logger.info("shutdown requested: in %gs, %d job(s) pending", delay, pending)
        self.grid.shutdown_later(delay)
        return pb.ShutdownResponse(delay=delay, jobs_pending=pending)


def descriptors(
    *,
    limits: GridLimits | None = None,
    handlers: Mapping[str, str] | None = None,
    default_handler: str = DEFAULT_HANDLER,
    worker_args: Sequence[str] = (),
    on_shutdown: Callable[[], None] | None = None,
    grid: Grid | None = None,
) -> list[RpcServiceDescriptor]:
    """The grid's three services (``grid_client``, ``grid_worker``, ``grid_controller``) for an ``RpcServer``.

    :param limits: queue/payload limits, retry policy, heartbeat timings.
    :param handlers: service_id -> ``"package.module:function"`` run by workers spawned with ``start_worker``.
    :param default_handler: handler of spawned workers for services not in ``handlers`` (echo).
    :param worker_args: extra ``python -m grpc_helper.grid worker`` options for spawned workers (e.g. TLS files).
    :param on_shutdown: called after the controller's ``shutdown`` closed the grid: stop the hosting server there.
    :param grid: share an existing ``Grid`` (the other parameters are then ignored).

    The ``Grid`` is reachable as ``descriptors[0].manager.grid`` (e.g. to ``close()`` it before the server).
    """
    grid = grid or Grid(
        limits, handlers=handlers, default_handler=default_handler, worker_args=worker_args, on_shutdown=on_shutdown
    )
    version = pb.GridApiVersion
    return [
        RpcServiceDescriptor(
            grid_pkg,
            "grid_client",
            version,
            GridClientManager(grid),
            pb_grpc.add_GridClientServiceServicer_to_server,
            pb_grpc.GridClientServiceStub,
        ),
        RpcServiceDescriptor(
            grid_pkg,
            "grid_worker",
            version,
            GridWorkerManager(grid),
            pb_grpc.add_GridWorkerServiceServicer_to_server,
            pb_grpc.GridWorkerServiceStub,
        ),
        RpcServiceDescriptor(
            grid_pkg,
            "grid_controller",
            version,
            GridControllerManager(grid),
            pb_grpc.add_GridControllerServiceServicer_to_server,
            pb_grpc.GridControllerServiceStub,
        ),
    ]
