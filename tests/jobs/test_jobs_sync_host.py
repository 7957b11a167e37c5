"""The transitional sync hosting (``sync_descriptor`` in an ``RpcServer``): same service, identity, cancellation."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from grpc_helper import RpcException
from grpc_helper import certs as tls
from grpc_helper.jobs import sync_descriptor
from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, STUBS, collect, first_line, run, status


def test_sync_hosting_serves_the_same_service(tmp_path: Path, tls_dir: Path, rpc_server_factory, rpc_client_factory):
    server = rpc_server_factory([sync_descriptor(tmp_path / "state")], credentials=tls.server_credentials(tls_dir),
                                admins=["root"])

    def jobs(name: str):
        return rpc_client_factory(server, stubs=STUBS, credentials=tls.channel_credentials(tls_dir, name),
                                  timeout=10).jobs

    alice, bob, root = jobs("alice"), jobs("bob"), jobs("root")
    st = run(alice, PY, "-c", "print('ready', flush=True); import time; time.sleep(60)")
    assert first_line(alice, st.job_id) == b"ready"
    with pytest.raises(RpcException) as info:
        status(bob, st.job_id)
    assert info.value.status == grpc.StatusCode.NOT_FOUND
    assert [j.job_id for j in root.List(jobs_pb2.ListRequest()).jobs] == [st.job_id]
    for _ in range(5):  # followers that go away while the job is quiet free their thread
        follower = alice.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=None)
        assert next(follower).data == b"ready\n"
        follower.close()
    assert alice.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=1)).stopped
    assert collect(alice, st.job_id)[jobs_pb2.STDOUT] == b"ready\n"
