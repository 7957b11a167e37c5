"""mTLS and authorization: handshake refusals, identity from the certificate, owner-or-admin rule."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from grpc_helper import ResultCode, RpcException
from grpc_helper import certs as tls
from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, STUBS, collect, first_line, run, status


def test_certs_init_layout_is_idempotent(tmp_path: Path):
    d = tls.init(tmp_path / "t", ["alice"], ["root"])
    ca = (d / "ca.pem").read_bytes()
    assert (d / "alice.key").stat().st_mode & 0o077 == 0
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    tls.init(d, ["bob"], ["carol"])
    assert (d / "ca.pem").read_bytes() == ca
    assert tls.admins_of(d) == {"root", "carol"}
    cn = x509.load_pem_x509_certificate((d / "bob.pem").read_bytes()).subject.rfc4514_string()
    assert cn == "CN=bob"
    with pytest.raises(ValueError, match="invalid client name"):
        tls.init(d, ["../x"])


def _expect_refused(env, credentials: grpc.ChannelCredentials) -> None:
    jobs = env.client(credentials=credentials, timeout=1.0).jobs
    with pytest.raises(RpcException) as info:
        jobs.List(jobs_pb2.ListRequest(), timeout=1.0)
    assert info.value.status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_handshake_needs_a_client_certificate_of_our_ca(jobs_env, tls_dir: Path):
    env = jobs_env()
    assert env.jobs("alice").List(jobs_pb2.ListRequest()).jobs == []
    ca = (tls_dir / "ca.pem").read_bytes()
    _expect_refused(env, grpc.ssl_channel_credentials(root_certificates=ca))  # no client certificate
    other = tls_dir / "other"
    foreign = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=(other / "alice.key").read_bytes(),
        certificate_chain=(other / "alice.pem").read_bytes(),
    )
    _expect_refused(env, foreign)  # "alice" signed by another CA


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_versions_below_1_2_are_refused(jobs_env, tls_dir: Path):
    env = jobs_env()
    for version, accepted in ((ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(tls_dir / "ca.pem")
        ctx.load_cert_chain(tls_dir / "alice.pem", tls_dir / "alice.key")
        ctx.set_alpn_protocols(["h2"])
        if not accepted:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
            ctx.minimum_version = version
        ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", env.server.port), timeout=5) as sock:
            if accepted:
                with ctx.wrap_socket(sock, server_hostname="localhost") as s:
                    assert s.version() == "TLSv1.2" and ("GCM" in s.cipher()[0] or "CHACHA" in s.cipher()[0])
            else:
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    ctx.wrap_socket(sock, server_hostname="localhost").do_handshake()


def test_plaintext_hosting_refuses_every_call(tmp_path: Path, jobs_server, rpc_client_factory):
    server = jobs_server(tmp_path / "state", plaintext=True)
    jobs = rpc_client_factory(server, stubs=STUBS, timeout=5).jobs
    for call in (lambda: jobs.List(jobs_pb2.ListRequest()), lambda: list(jobs.Logs(jobs_pb2.LogsRequest(job_id="x")))):
        with pytest.raises(RpcException) as info:
            call()
        assert info.value.status == grpc.StatusCode.UNAUTHENTICATED and "client certificate" in info.value.message
    with pytest.raises(RpcException) as info:
        run(jobs, "true")
    assert info.value.rc == ResultCode.ERROR_UNAUTHENTICATED


def test_clients_only_see_their_own_jobs_admins_see_all(jobs_env):
    env = jobs_env()
    alice, bob, root = env.jobs("alice"), env.jobs("bob"), env.jobs("root")
    a = run(alice, PY, "-c", "print('ready', flush=True); import time; time.sleep(60)")
    b = run(bob, "true")
    assert a.owner == "alice" and b.owner == "bob"
    assert first_line(alice, a.job_id) == b"ready"
    not_found = [
        lambda: status(bob, a.job_id),
        lambda: bob.Stop(jobs_pb2.StopRequest(job_id=a.job_id)),
        lambda: collect(bob, a.job_id, follow=False),
    ]
    for call in not_found:
        with pytest.raises(RpcException) as info:
            call()
        assert info.value.status == grpc.StatusCode.NOT_FOUND
        assert a.job_id in info.value.message  # same answer as for an id that does not exist
    assert [j.job_id for j in alice.List(jobs_pb2.ListRequest()).jobs] == [a.job_id]
    assert [j.job_id for j in bob.List(jobs_pb2.ListRequest()).jobs] == [b.job_id]
    assert [j.job_id for j in root.List(jobs_pb2.ListRequest()).jobs] == [a.job_id, b.job_id]
    assert status(root, a.job_id).state == jobs_pb2.JOB_RUNNING
    stopped = root.Stop(jobs_pb2.StopRequest(job_id=a.job_id, grace_seconds=5))
    assert stopped.stopped and stopped.status.state == jobs_pb2.JOB_KILLED
    assert stopped.status.stopped_by == jobs_pb2.STOP_USER and stopped.status.signal == 15


def test_one_client_past_its_stream_quota_is_refused_while_others_are_served(jobs_env):
    from grpc_helper import CallLimits

    env = jobs_env(server_options={"limits": CallLimits(max_calls=20, max_streams=5)})
    alice, bob = env.jobs("alice"), env.jobs("bob")
    st = run(alice, PY, "-c", "print('ready', flush=True); import time; time.sleep(60)")
    followers = [alice.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=None) for _ in range(5)]
    for f in followers:
        assert next(f).data == b"ready\n"  # five live streams held by alice
    with pytest.raises(RpcException) as info:
        next(alice.Logs(jobs_pb2.LogsRequest(job_id=st.job_id, follow=True), timeout=5))
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status(alice, st.job_id).state == jobs_pb2.JOB_RUNNING  # her unary calls still answer
    mine = run(bob, "echo", "bob")  # and bob is served: unary calls and streams
    assert collect(bob, mine.job_id) == {jobs_pb2.STDOUT: b"bob\n", jobs_pb2.STDERR: b""}
    alice.Stop(jobs_pb2.StopRequest(job_id=st.job_id, grace_seconds=1))
    for f in followers:
        assert list(f) == []  # they end with the job
    assert collect(alice, st.job_id)[jobs_pb2.STDOUT] == b"ready\n"  # her quota is back once they ended


def _two_names_credentials(tls_dir: Path) -> grpc.ChannelCredentials:
    """A client certificate from the server's own CA whose subject holds two common names: alice, then root."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_dir = tls.default_ca_dir(tls_dir)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice"), x509.NameAttribute(NameOID.COMMON_NAME, "root")])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.pem").read_bytes(), private_key=pem_key,
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )


def test_a_certificate_with_two_common_names_is_refused_not_taken_for_an_admin(jobs_env, tls_dir: Path):
    env = jobs_env()
    theirs = run(env.jobs("bob"), "true")
    jobs = env.client(credentials=_two_names_credentials(tls_dir)).jobs
    for call in (lambda: jobs.List(jobs_pb2.ListRequest()), lambda: status(jobs, theirs.job_id),
                 lambda: run(jobs, "true")):
        with pytest.raises(RpcException) as info:
            call()
        assert info.value.status == grpc.StatusCode.UNAUTHENTICATED and "common names" in info.value.message
    assert [j.job_id for j in env.jobs("root").List(jobs_pb2.ListRequest()).jobs] == [theirs.job_id]  # nothing ran
