"""Mapping between the scheduler's records and the grid's protobuf messages."""

from __future__ import annotations

from grpc_helper.grid.api import grid_pb2 as pb
from grpc_helper.grid.model import JobView, WorkerOutput, WorkerResult


def job_result(view: JobView) -> pb.JobResult:
    return pb.JobResult(
        job_id=view.job_id,
        state=int(view.state),  # type: ignore[arg-type]
        data=view.data,
        error=view.error,
        attempts=view.attempts,
        rc=view.rc,
    )


def result_batch(views: list[JobView]) -> pb.ResultBatch:
    return pb.ResultBatch(results=[job_result(v) for v in views])


def worker_results(message: pb.WorkerResults) -> list[WorkerResult]:
    return [WorkerResult(r.job_id, r.lease, r.ok, r.data, r.error[:4096]) for r in message.results]


def server_message(out: WorkerOutput) -> pb.ServerMessage:
    if out.stop:
        return pb.ServerMessage(command=pb.WorkerCommand(command=pb.WORKER_COMMAND_STOP))
    jobs = [pb.Job(job_id=d.job_id, lease=d.lease, data=d.data, confirm_start=d.confirm_start) for d in out.jobs]
    return pb.ServerMessage(jobs=pb.JobBatch(jobs=jobs))
