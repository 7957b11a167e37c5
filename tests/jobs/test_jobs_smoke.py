from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, collect, run, wait_done


def test_smoke(jobs_env):
    env = jobs_env()
    jobs = env.jobs("alice")
    st = run(jobs, PY, "-c", "import sys; print('hello'); print('oops', file=sys.stderr); sys.exit(3)")
    assert st.state == jobs_pb2.JOB_RUNNING
    final = wait_done(jobs, st.job_id)
    assert final.state == jobs_pb2.JOB_EXITED and final.exit_code == 3
    out = collect(jobs, st.job_id)
    assert out[jobs_pb2.STDOUT] == b"hello\n" and out[jobs_pb2.STDERR] == b"oops\n"
