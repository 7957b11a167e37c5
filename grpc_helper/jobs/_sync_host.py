"""The asyncio ``JobsManager`` hosted by a sync ``RpcServer``: its calls run on a private event loop thread.

Transitional, for servers that still host thread-based services beside the job runner: here every open log
stream holds a server thread again (the sync server's model). Host :func:`grpc_helper.jobs.descriptor` in an
``AsyncRpcServer`` instead whenever possible.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from grpc_helper import RpcManager
from grpc_helper.jobs.api import jobs_pb2, jobs_pb2_grpc
from grpc_helper.jobs.manager import JobsManager

T = TypeVar("T")


class SyncJobsHost(jobs_pb2_grpc.JobsServicer, RpcManager):
    """Runs a :class:`JobsManager`'s coroutines on a loop thread it owns, in the calling thread's context (so
    ``current_identity()`` is the caller's there too)."""

    def __init__(self, manager: JobsManager) -> None:
        super().__init__()
        self.manager = manager
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="jobs-loop", daemon=True)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> tuple[concurrent.futures.Future[T], list[asyncio.Task[T]]]:
        context = contextvars.copy_context()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self._loop.create_task(coro, context=context)
            tasks.append(task)

            def finish(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    done.cancel()
                elif t.exception() is not None:
                    done.set_exception(t.exception())  # type: ignore[arg-type]
                else:
                    done.set_result(t.result())

            task.add_done_callback(finish)

        self._loop.call_soon_threadsafe(start)
        return done, tasks

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._submit(coro)[0].result()

    def load(self) -> None:
        self._thread.start()
        try:
            self._run(self.manager.load())
        except BaseException:
            self._stop_loop()
            raise

    def begin_shutdown(self) -> None:
        self._run(self.manager.begin_shutdown())

    def shutdown(self) -> None:
        try:
            self._run(self.manager.shutdown())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self._loop.close()

    def Run(self, request: jobs_pb2.RunRequest, context: Any) -> jobs_pb2.JobStatus:
        return self._run(self.manager.Run(request, context))

    def Stop(self, request: jobs_pb2.StopRequest, context: Any) -> jobs_pb2.StopResponse:
        return self._run(self.manager.Stop(request, context))

    def Status(self, request: jobs_pb2.JobRequest, context: Any) -> jobs_pb2.JobStatus:
        return self._run(self.manager.Status(request, context))

    def List(self, request: jobs_pb2.ListRequest, context: Any) -> jobs_pb2.ListResponse:
        return self._run(self.manager.List(request, context))

    def Logs(self, request: jobs_pb2.LogsRequest, context: Any) -> Iterator[jobs_pb2.LogChunk]:
        chunks: AsyncIterator[jobs_pb2.LogChunk] = self.manager.Logs(request, context)  # type: ignore[assignment]
        waiting: list[list[asyncio.Task[Any]]] = []  # the tasks of the current wait (filled on the loop)

        def cancel_on_loop() -> None:  # queued after the current wait's start(): its task exists by now
            for tasks in waiting:
                for task in tasks:
                    task.cancel()

        async def next_chunk() -> jobs_pb2.LogChunk:
            return await anext(chunks)

        async def close() -> None:
            await chunks.aclose()  # type: ignore[attr-defined]

        if not context.add_callback(lambda: self._loop.call_soon_threadsafe(cancel_on_loop)):
            return
        try:
            while True:
                future, tasks = self._submit(next_chunk())
                waiting[:] = [tasks]
                try:
                    item = future.result()
                except (StopAsyncIteration, concurrent.futures.CancelledError):
                    return
                yield item
        finally:
            self._run(close())
