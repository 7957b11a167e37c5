"""The ``redis`` backend: one queue in Redis Streams shared by several grid servers (``redis://HOST:PORT/DB``).

Jobs wait in one stream per (service, version) with a consumer group; every grid server is a consumer that takes
(``XREADGROUP``) only as many jobs as its workers have room for, so jobs go to whichever server has idle workers.
A job taken is a lease: the server renews it (``XCLAIM ... JUSTID``) while it holds the job; when a server stops
renewing (crash), another server takes its jobs over after ``GridLimits.lease_ttl`` (``XAUTOCLAIM``), and a job
whose servers were lost ``max_lost`` times fails as one that loses its servers (delivery counts). Results are
stored per session; the server holding the session's results stream (its *home*) is told through its inbox
stream, and a client that reconnects to another server moves its session there (``adopt``). Attempt, failure and
loss counts travel with the job, so retries and poison jobs behave as on one server.

Writes go through the group commit (``_commit``): one pipeline per pile of records; a submit is answered once
its jobs are in Redis. What survives what is Redis's: with ``appendonly yes`` and ``appendfsync everysec`` an
acknowledged job survives a Redis crash but for the last second; without persistence, only grid server crashes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from grpc_helper import ResultCode
from grpc_helper.grid import _redis_layout as layout
from grpc_helper.grid._backend import BackendUnavailable, Feed
from grpc_helper.grid._commit import GroupCommit
from grpc_helper.grid._redis_consumer import STATUS_PERIOD, Consumer, Entry
from grpc_helper.grid._redis_layout import DEFAULT_PREFIX, GROUP, Layout, pack_result, unpack_result
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import TERMINAL, GridClosedError, GridUnknownError, JobRecord, JobState

_log = logging.getLogger("grpc_helper.grid")

#: Job ids reserved from Redis at a time.
ID_BLOCK = 100_000
_Op = tuple[Any, ...]


class RedisBackend(GroupCommit[list[_Op]]):
    """Shared, durable (as Redis is) queue of the grid servers using the same Redis and prefix."""

    name = "redis"
    durable = True
    shared = True

    def __init__(self, url: str, *, prefix: str | None = None, window: float = 0.002) -> None:
        """``url``: ``redis://[:PASSWORD@]HOST:PORT/DB`` (``rediss://`` for TLS), optionally with ``?prefix=NAME``
        (default ``grpc-helper:grid:``): the grid servers using the same Redis, database and prefix share one queue.
        Raises ``BackendUnavailable`` when Redis does not answer."""
        super().__init__(window, "grid-redis-writer")
        url, url_prefix = _split_prefix(url)
        prefix = prefix or url_prefix or DEFAULT_PREFIX
        self.url = url
        self.prefix = prefix
        self.server = f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            self._redis.close()
            raise BackendUnavailable(f"Redis at {_safe_url(url)} does not answer: {exc}") from None
        self.layout = Layout(prefix)
        self._scripts = {name: self._redis.register_script(getattr(layout, name)) for name in layout.SCRIPTS}
        self._ops: list[_Op] = []
        self._poke = False
        self._ids = range(0)
        self._ids_lock = threading.Lock()
        self._feed: Feed | None = None
        self._limits = GridLimits()
        self._consumer: Consumer | None = None
        self._stopped = False
        self.handed_back = 0
        self._inbox = self.layout.inbox(self.server)
        self._start_writer()

    @property
    def _ttl(self) -> int:
        limits = self._limits
        return int(max(limits.session_ttl, limits.result_ttl) * 2 + limits.lease_ttl) + 60

    # ---- start ----

    def attach(self, feed: Feed) -> None:
        self._feed = feed
        self._limits = feed.limits
        self._redis.set(self.layout.ids, time.time_ns() // 1000, nx=True)  # ids grow across restarts
        reader = redis.Redis.from_url(self.url, socket_timeout=30, socket_connect_timeout=5)
        self._consumer = Consumer(
            self._redis,
            reader,
            self.layout,
            self.server,
            feed,
            take=self._scripts["TAKE"],
            store_failure=self.updated,
            hand_back=self._hand_back,
            ttl=lambda: self._ttl,
        )
        self._consumer.start()

    def job_ids(self, count: int) -> range:
        with self._ids_lock:
            if len(self._ids) < count:
                size = max(count, ID_BLOCK)
                end = int(self._redis.incrby(self.layout.ids, size)) + 1
                self._ids = range(end - size, end)
            ids, self._ids = self._ids[:count], self._ids[count:]
            return ids

    # ---- records (under the scheduler's lock: never wait) ----

    def accepted(self, jobs: Sequence[JobRecord]) -> None:
        if not jobs:
            return
        first = jobs[0]
        with self._cond:
            if self._closing:
                return
            self._ops.append(("accept", first.session, first.owner, first.key, [(j.id, j.payload or b"") for j in jobs]))
            self._record(len(jobs))

    def updated(self, job: JobRecord) -> None:
        with self._cond:
            if self._closing:
                return
            if job.state in TERMINAL:
                queue, entry = self._consumer.release(job.id) if self._consumer is not None else ("", "")
                self._ops.append(("complete", job.session, job.id, pack_result(job), entry, queue))
            else:
                counts = f"{job.attempts} {job.failures} {job.losses} {int(job.suspect)}"
                self._ops.append(("counts", job.session, job.id, counts))
            self._record(1)

    def released(self, jobs: Iterable[JobRecord]) -> None:
        by_session: dict[str, list[int]] = {}
        for job in jobs:
            by_session.setdefault(job.session, []).append(job.id)
        if not by_session:
            return
        with self._cond:
            if self._closing:
                return
            for session, ids in by_session.items():
                self._ops.append(("release", session, ids))
            self._record(len(by_session))

    def session_ended(self, session: str, jobs: Sequence[JobRecord]) -> None:
        with self._cond:
            if self._closing:
                return
            self._ops.append(("end", session))
            self._record(1)

    def wanted(self) -> None:
        if not self._poke:
            with self._cond:
                self._poke = True
                self._cond.notify()

    # ---- group commit: one pipeline per pile ----

    def _has_pending(self) -> bool:
        return bool(self._ops) or self._poke

    def _take(self) -> list[_Op]:
        ops, self._ops = self._ops, []
        if self._poke:
            self._poke = False
            ops.append(("poke",))
        return ops

    def _put_back(self, pile: list[_Op]) -> None:
        self._ops[:0] = [op for op in pile if op[0] != "poke"]

    def _where(self) -> str:
        return _safe_url(self.url)

    def _store(self, pile: list[_Op]) -> None:
        if not pile:
            return
        pipe = self._redis.pipeline(transaction=False)
        prefix, ttl, me, layout = self.prefix, self._ttl, self.server, self.layout
        scripts = self._scripts
        refused: list[JobRecord] = []
        accepts: list[tuple[int, _Op]] = []
        completions: list[Any] = []
        for op in pile:
            kind = op[0]
            if kind == "accept":
                _, session, owner, key, jobs = op
                limits = self._limits
                args: list[Any] = [
                    prefix, session, owner, me, layout.queue(key), ttl, limits.max_identity_jobs,
                    limits.max_identity_sessions,
                ]
                for job_id, payload in jobs:
                    args += (job_id, payload)
                accepts.append((len(pipe), op))
                scripts["ACCEPT"](args=args, client=pipe)
            elif kind == "complete":
                _, session, job_id, packed, entry, queue = op
                completions += (session, job_id, packed, entry, queue)
            elif kind == "counts":
                _, session, job_id, counts = op
                pipe.hset(layout.session("jc", session), str(job_id), counts)
                pipe.expire(layout.session("jc", session), ttl)
            elif kind == "release":
                _, session, ids = op
                for name in ("sj", "r", "jc"):
                    pipe.hdel(layout.session(name, session), *map(str, ids))
            elif kind == "end":
                scripts["END"](args=[prefix, op[1], me], client=pipe)
            elif kind == "hand_back":
                scripts["HAND_BACK"](args=[prefix, op[1], op[2]], client=pipe)
            elif kind == "poke":
                pipe.xadd(self._inbox, {"poke": "1"})  # never trimmed: notices wait in the same stream
        for i in range(0, len(completions), 5 * 1000):  # a script runs alone: keep each one short
            scripts["COMPLETE"](args=[prefix, me, ttl, *completions[i : i + 5 * 1000]], client=pipe)
        results = pipe.execute()
        for index, op in accepts:
            code, *count = results[index]
            if code == 1:
                continue
            _, session, owner, key, jobs = op
            held = count[0] if count else 0
            if code == 0:  # the session id belongs to another identity on another server
                error, rc = "session id in use by another identity on the grid: use another session", ResultCode.ERROR_PARAM_INVALID
            elif code == 2:
                error = (
                    f"identity quota: {owner[:64]!r} holds {held} jobs on the grid, {len(jobs)} more exceed "
                    f"max_identity_jobs={self._limits.max_identity_jobs} (collect results, then retry)"
                )
                rc = ResultCode.ERROR_RESOURCE_EXHAUSTED
            else:
                error = (
                    f"identity quota: {owner[:64]!r} has {held} sessions holding jobs on the grid, one more exceeds "
                    f"max_identity_sessions={self._limits.max_identity_sessions} (collect results, then retry)"
                )
                rc = ResultCode.ERROR_RESOURCE_EXHAUSTED
            refused += [
                JobRecord(job_id, session, owner, key, None, 0, state=JobState.FAILED, rc=rc, error=error)
                for job_id, _ in jobs
            ]
        if refused and self._feed is not None:
            self._feed.remote_results(refused)

    def _hand_back(self, entries: list[Entry]) -> None:
        """Jobs this server took but won't run go back to the queue as new entries (no lease to wait for)."""
        if not entries:
            return
        with self._cond:
            if self._closing:
                return
            self._ops += [("hand_back", queue, entry) for queue, entry in entries]
            self.handed_back += len(entries)
            self._record(len(entries))

    # ---- adoption, status ----

    async def adopt(self, session: str, owner: str) -> list[JobRecord] | None:
        try:
            return await asyncio.to_thread(self._adopt, session, owner)
        except redis.RedisError as exc:
            raise GridClosedError(f"the grid's queue ({self._where()}) does not answer: {str(exc)[:200]}") from None

    def _adopt(self, session: str, owner: str) -> list[JobRecord]:
        reply: Any = self._scripts["ADOPT"](args=[self.prefix, session, owner, self.server, self._ttl])
        if not reply[0]:
            raise GridUnknownError(f"unknown session {session[:40]!r}")
        if len(reply) < 3:
            return []
        held = _pairs(reply[1])
        results = _pairs(reply[2])
        jobs = []
        for job_id, mapping in held.items():
            queue = mapping.decode().partition(" ")[2]
            job = JobRecord(int(job_id), session, owner, self.layout.key(queue), None, 0)
            packed = results.get(job_id)
            if packed is not None:
                unpack_result(job, packed)
            jobs.append(job)
        return jobs

    def grid_status(self) -> dict[str, Any]:
        r = self._redis
        now = time.time()
        fresh = 3 * STATUS_PERIOD + self._limits.lease_ttl
        servers = []
        registry: dict[Any, Any] = r.hgetall(self.layout.servers)  # type: ignore[assignment]
        members: set[Any] = r.smembers(self.layout.queues)  # type: ignore[assignment]
        for server, raw in sorted(registry.items()):
            info = json.loads(raw)
            if now - info.get("ts", 0) <= fresh:
                servers.append({"server": server.decode(), **info})
        queues = sorted(q.decode() for q in members)
        pipe = r.pipeline(transaction=False)
        for queue in queues:
            pipe.xlen(queue)
            pipe.xpending(queue, GROUP)
        replies = pipe.execute()
        out = []
        for i, queue in enumerate(queues):
            length, pending = replies[2 * i], replies[2 * i + 1]
            leased = int(pending["pending"]) if isinstance(pending, dict) else 0
            service, version = self.layout.key(queue)
            out.append({"service_id": service, "service_version": version, "queued": length - leased, "leased": leased})
        return {"backend": self.status(), "servers": servers, "queues": out}

    def status(self) -> dict[str, Any]:
        consumer = self._consumer
        return {
            "name": self.name,
            "durable": self.durable,
            "url": _safe_url(self.url),
            "prefix": self.prefix,
            "server": self.server,
            "leased_here": consumer.held if consumer else 0,
            "pulled": consumer.pulled if consumer else 0,
            "reclaimed": consumer.reclaimed if consumer else 0,
            "handed_back": self.handed_back,
            "commits": self.commits,
            "errors": self.errors,
            "pending": self.pending,
        }

    # ---- life cycle ----

    def close(self) -> None:
        """Stop reading, give the jobs held here back to the queue (the other servers run them at once), store
        what is pending, disconnect."""
        if self._stopped:
            return
        self._stopped = True
        if self._consumer is not None:
            with self._cond:
                self._poke = True  # wakes the reader from its blocking read
                self._cond.notify()
            self._hand_back(self._consumer.stop(timeout=2 * STATUS_PERIOD + 5))
        super().close()

    def _close_storage(self) -> None:
        try:
            self._redis.hdel(self.layout.servers, self.server)
            self._redis.delete(self._inbox)
        except redis.RedisError as exc:
            _log.warning("grid redis %s: not cleaned up at close: %s", _safe_url(self.url), exc)
        self._redis.close()
        if self._consumer is not None:
            self._consumer.close()


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _split_prefix(url: str) -> tuple[str, str]:
    """(the URL without a ``prefix`` query parameter, that parameter)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for name, value in query if name == "prefix"), "")
    rest = urllib.parse.urlencode([(name, value) for name, value in query if name != "prefix"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), prefix


def _safe_url(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
