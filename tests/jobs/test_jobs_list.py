"""List: pages (size, token, byte budget), order, filters (state; owner for admins), bad requests."""

from __future__ import annotations

import grpc
import pytest

from grpc_helper import RpcException
from grpc_helper.jobs.api import jobs_pb2

from .jobs_helpers import PY, run, wait_done


def _pages(jobs, **fields) -> list[list[str]]:
    request = jobs_pb2.ListRequest(**fields)
    pages = []
    while True:
        page = jobs.List(request)
        pages.append([j.job_id for j in page.jobs])
        if not page.next_page_token:
            return pages
        request.page_token = page.next_page_token


def test_pages_in_both_orders_with_state_and_owner_filters(jobs_env):
    env = jobs_env()
    alice, bob, root = env.jobs("alice"), env.jobs("bob"), env.jobs("root")
    ended = [wait_done(alice, run(alice, "true").job_id).job_id for _ in range(6)]
    sleeper = run(alice, PY, "-c", "import time; time.sleep(60)").job_id
    theirs = wait_done(bob, run(bob, "true").job_id).job_id
    mine = [*ended, sleeper]
    assert _pages(alice, page_size=3) == [mine[0:3], mine[3:6], mine[6:]]
    assert _pages(alice, page_size=3, newest_first=True) == [mine[::-1][0:3], mine[::-1][3:6], mine[::-1][6:]]
    assert _pages(alice, page_size=7) == [mine]  # no empty trailing page
    assert _pages(alice) == [mine]  # default page size 100
    assert _pages(alice, states=[jobs_pb2.JOB_RUNNING]) == [[sleeper]]
    assert _pages(alice, states=[jobs_pb2.JOB_EXITED], page_size=4) == [ended[:4], ended[4:]]
    assert _pages(alice, owner="alice", page_size=100) == [mine]
    assert _pages(bob) == [[theirs]]
    assert _pages(root) == [[*mine, theirs]]  # admins see everyone's
    assert _pages(root, owner="bob") == [[theirs]]
    assert _pages(root, owner="nobody") == [[]]
    assert _pages(alice, page_size=5000) == [mine]  # capped at 1000, not refused


def test_a_page_ends_before_the_message_limit(jobs_env):
    jobs = jobs_env().jobs("alice")
    big = "x" * (900 << 10)  # more than one argument may hold: the job fails to start, its record stays
    ids = [run(jobs, "echo", big).job_id for _ in range(5)]
    pages = _pages(jobs, page_size=100)
    assert [i for page in pages for i in page] == ids and len(pages) == 2 and len(pages[0]) == 3


@pytest.mark.parametrize(
    ("name", "fields", "code"),
    [
        ("other owner", {"owner": "bob"}, grpc.StatusCode.PERMISSION_DENIED),
        ("bad token", {"page_token": "nope"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("long token", {"page_token": "x" * 100_000}, grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown state", {"states": [42]}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_list_requests(jobs_env, name, fields, code):
    jobs = jobs_env().jobs("alice")
    with pytest.raises(RpcException) as info:
        jobs.List(jobs_pb2.ListRequest(**fields))
    assert info.value.status == code, name
    assert len(info.value.message) < 300
