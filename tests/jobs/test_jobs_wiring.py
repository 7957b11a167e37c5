"""Sandbox options wired from the server's configuration and the Run request: accounts, namespaces."""

from __future__ import annotations

import os
import socket

import grpc
import pytest

from grpc_helper import RpcException
from grpc_helper.jobs.api import jobs_pb2
from grpc_helper.jobs.sandbox import Isolation, support

from .jobs_helpers import collect, run, wait_done

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs a server running as root")


def _needs(namespace: str) -> None:
    if not getattr(support(), namespace):
        pytest.skip(f"no {namespace} namespace here: {support().reason}")


def _out(jobs, *argv: str, **fields) -> tuple[jobs_pb2.JobStatus, bytes]:
    st = run(jobs, *argv, **fields)
    final = wait_done(jobs, st.job_id)
    return final, collect(jobs, st.job_id)[jobs_pb2.STDOUT]


@needs_root
def test_accounts_come_from_the_server_per_client(jobs_env):
    env = jobs_env(run_as_for={"bob": "daemon"})
    alice, bob = env.jobs("alice"), env.jobs("bob")
    st, out = _out(alice, "id", "-un")
    assert out == b"nobody\n" and st.user == "nobody"
    st, out = _out(bob, "id", "-un")
    assert out == b"daemon\n" and st.user == "daemon"


def test_an_unknown_account_stops_the_server_from_starting(jobs_env):
    with pytest.raises(RpcException) as info:
        jobs_env(run_as="no-such-user-here")
    assert "unknown user 'no-such-user-here'" in info.value.message


def test_no_network_and_private_tmp_on_request(jobs_env, tmp_path):
    _needs("net")
    _needs("tmp")
    env = jobs_env()
    jobs = env.jobs("alice")
    probe = f"import socket; socket.create_connection(('127.0.0.1', {env.server.port}), timeout=2); print('reached')"
    from .jobs_helpers import PY

    st, out = _out(jobs, PY, "-c", probe)
    assert out == b"reached\n" and "net" not in st.namespaces.split(",")
    st, out = _out(jobs, PY, "-c", probe, no_network=True)
    assert out == b"" and st.exit_code != 0 and "net" in st.namespaces.split(",")
    st, out = _out(jobs, "sh", "-c", "echo x > /tmp/grpc-helper-wiring-$$; ls /tmp | wc -l", private_tmp=True)
    assert out == b"1\n" and "tmp" in st.namespaces.split(",")
    with socket.socket() as s:  # the server is still there for the others
        s.connect(("127.0.0.1", env.server.port))


def test_namespaces_the_host_lacks_are_refused_with_the_reason(jobs_env):
    host = support()
    if host.net and host.tmp:
        pytest.skip("every namespace is available here")
    jobs = jobs_env(isolation=Isolation(pid=False)).jobs("alice")
    with pytest.raises(RpcException) as info:
        run(jobs, "true", no_network=not host.net, private_tmp=not host.tmp)
    assert info.value.status == grpc.StatusCode.FAILED_PRECONDITION and "namespace" in info.value.message
