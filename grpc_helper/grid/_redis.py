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
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from grpc_helper import ResultCode
from grpc_helper.grid import _redis_scripts as lua
from grpc_helper.grid._backend import BackendUnavailable, Feed
from grpc_helper.grid._commit import GroupCommit
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.model import TERMINAL, GridClosedError, GridUnknownError, JobRecord, JobState, Key

_log = logging.getLogger("grpc_helper.grid")

DEFAULT_PREFIX = "grpc-helper:grid:"
#: Job ids reserved from Redis at a time.
ID_BLOCK = 100_000
_GROUP = lua.GROUP
_RESULT = struct.Struct("!BiII")  # state, rc, attempts, error length
_STATUS_PERIOD = 1.0
_Op = tuple[Any, ...]


def pack_result(job: JobRecord) -> bytes:
    error = job.error.encode()
    return _RESULT.pack(int(job.state), job.rc, job.attempts, len(error)) + error + job.data


def unpack_result(job: JobRecord, packed: bytes) -> JobRecord:
    state, rc, attempts, length = _RESULT.unpack_from(packed)
    start = _RESULT.size
    job.state = JobState(state)
    job.rc = rc
    job.attempts = attempts
    job.error = packed[start : start + length].decode(errors="replace")
    job.data = packed[start + length :]
    job.payload = None
    job.size = len(job.data)
    return job


class RedisBackend(GroupCommit[list[_Op]]):
    """Shared, durable (as Redis is) queue of the grid servers using the same Redis and prefix."""

    name = "redis"
    durable = True
    shared = True
    retried = (redis.ConnectionError, redis.TimeoutError, OSError)

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
        self._reader_redis = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self._scripts = {name: self._redis.register_script(getattr(lua, name)) for name in lua.SCRIPTS}
        self._groups_made: set[str] = set()
        self._ops: list[_Op] = []
        self._poke = False
        self._held: dict[int, tuple[str, str]] = {}  # job id -> (queue, entry id) of jobs leased to this server
        self._held_lock = threading.Lock()
        self._queues: dict[Key, str] = {}
        self._keys: dict[str, Key] = {}
        self._ids = range(0)
        self._ids_lock = threading.Lock()
        self._feed: Feed | None = None
        self._limits = GridLimits()
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self.pulled = 0
        self.reclaimed = 0
        self.handed_back = 0
        self._inbox = f"{prefix}in:{self.server}"
        self._start_writer()

    # ---- names ----

    def queue(self, key: Key) -> str:
        name = self._queues.get(key)
        if name is None:
            name = self._queues[key] = f"{self.prefix}q:{key[0]}\x1f{key[1]}"
            self._keys[name] = key
        return name

    def _key(self, queue: str) -> Key:
        key = self._keys.get(queue)
        if key is None:
            service, _, version = queue[len(self.prefix) + 2 :].partition("\x1f")
            key = (service, version)
            self._keys[queue] = key
        return key

    @property
    def _ttl(self) -> int:
        limits = self._limits
        return int(max(limits.session_ttl, limits.result_ttl) * 2 + limits.lease_ttl) + 60

    # ---- start ----

    def attach(self, feed: Feed) -> None:
        self._feed = feed
        self._limits = feed.limits
        self._redis.set(self.prefix + "ids", time.time_ns() // 1000, nx=True)  # ids grow across restarts
        self._reader = threading.Thread(target=self._read_loop, name="grid-redis-reader", daemon=True)
        self._reader.start()

    def job_ids(self, count: int) -> range:
        with self._ids_lock:
            if len(self._ids) < count:
                size = max(count, ID_BLOCK)
                end = int(self._redis.incrby(self.prefix + "ids", size)) + 1
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
                with self._held_lock:
                    queue, entry = self._held.pop(job.id, ("", ""))
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
        prefix, ttl, me = self.prefix, self._ttl, self.server
        scripts = self._scripts
        refused: list[JobRecord] = []
        accepts: list[tuple[int, _Op]] = []
        for op in pile:
            kind = op[0]
            if kind == "accept":
                _, session, owner, key, jobs = op
                args: list[Any] = [prefix, session, owner, me, self.queue(key), ttl]
                for job_id, payload in jobs:
                    args += (job_id, payload)
                accepts.append((len(pipe), op))
                scripts["ACCEPT"](args=args, client=pipe)
            elif kind == "complete":
                _, session, job_id, packed, entry, queue = op
                scripts["COMPLETE"](args=[prefix, session, job_id, packed, me, ttl, entry, queue], client=pipe)
            elif kind == "counts":
                _, session, job_id, counts = op
                pipe.hset(f"{prefix}jc:{session}", str(job_id), counts)
                pipe.expire(f"{prefix}jc:{session}", ttl)
            elif kind == "release":
                _, session, ids = op
                for name in ("sj", "r", "jc"):
                    pipe.hdel(f"{prefix}{name}:{session}", *map(str, ids))
            elif kind == "end":
                scripts["END"](args=[prefix, op[1], me], client=pipe)
            elif kind == "hand_back":
                scripts["HAND_BACK"](args=[prefix, op[1], op[2]], client=pipe)
            elif kind == "poke":
                pipe.xadd(self._inbox, {"poke": "1"}, maxlen=1000, approximate=True)
        results = pipe.execute()
        for index, op in accepts:
            if results[index] == 0:  # the session id belongs to another identity on another server
                _, session, owner, key, jobs = op
                refused += [
                    JobRecord(
                        job_id, session, owner, key, None, 0, state=JobState.FAILED, rc=ResultCode.ERROR_PARAM_INVALID,
                        error="session id in use by another identity on the grid: use another session",
                    )
                    for job_id, _ in jobs
                ]
        if refused and self._feed is not None:
            self._feed.remote_results(refused)

    # ---- the reader thread: jobs for this server's workers, result notices for its sessions ----

    def _read_loop(self) -> None:
        next_maintenance = 0.0
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                feed = self._feed
                assert feed is not None
                demand = feed.demand()
                now = time.monotonic()
                if now >= next_maintenance:
                    self._maintain(feed, demand)
                    next_maintenance = now + min(_STATUS_PERIOD, self._limits.lease_ttl / 4)
                    demand = feed.demand()
                if not self._read(feed, demand, block=False):
                    self._read(feed, demand, block=True)
                backoff = 0.1
            except redis.RedisError as exc:
                if self._stopping.is_set():
                    return
                self._groups_made.clear()  # a stream may have been deleted: make its group again
                _log.error("grid redis %s: %s (retrying)", _safe_url(self.url), exc)
                self._stopping.wait(backoff)
                backoff = min(2.0, backoff * 2)

    def _read(self, feed: Feed, demand: dict[Key, int], *, block: bool) -> bool:
        """Read the inbox and the queues this server's workers want; True if anything came."""
        r = self._reader_redis
        self._ensure_group(self._inbox)
        wanted = {self.queue(key): count for key, count in demand.items()}
        for queue in wanted:
            self._ensure_group(queue)
        replies: Any
        if block:
            streams: dict[Any, Any] = {self._inbox: ">", **dict.fromkeys(wanted, ">")}
            replies = r.xreadgroup(_GROUP, self.server, streams, count=1, block=int(_STATUS_PERIOD * 1000))
        else:
            pipe = r.pipeline(transaction=False)
            pipe.xreadgroup(_GROUP, self.server, {self._inbox: ">"}, count=1000)
            for queue, count in wanted.items():
                pipe.xreadgroup(_GROUP, self.server, {queue: ">"}, count=min(count, 10_000))
            replies = [reply for group in pipe.execute() for reply in (group or [])]
        got = False
        for stream, entries in replies or []:
            if not entries:
                continue
            got = True
            name = stream.decode()
            if name == self._inbox:
                self._notices(feed, entries)
            else:
                self._leased(feed, name, entries, reclaimed={})
        return got

    def _ensure_group(self, queue: str) -> None:
        if queue in self._groups_made:
            return
        try:
            self._redis.xgroup_create(queue, _GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_made.add(queue)

    def _leased(self, feed: Feed, queue: str, replies: Any, reclaimed: dict[str, int]) -> None:
        """Jobs taken from ``queue``: those still wanted go to the scheduler, the others are removed."""
        prefix = self.prefix
        entries: list[tuple[str, dict[bytes, bytes]]] = [(eid.decode(), fields) for eid, fields in replies if fields]
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for _, fields in entries:
            session, job_id = fields[b"s"].decode(), fields[b"id"].decode()
            pipe.hexists(f"{prefix}sj:{session}", job_id)
            pipe.hexists(f"{prefix}r:{session}", job_id)
            pipe.hget(f"{prefix}jc:{session}", job_id)
        checks = pipe.execute()
        key = self._key(queue)
        jobs: list[JobRecord] = []
        gone: list[str] = []
        failed: list[JobRecord] = []
        max_lost = self._limits.max_lost
        for i, (eid, fields) in enumerate(entries):
            held, completed, counts = checks[3 * i : 3 * i + 3]
            if not held or completed:
                gone.append(eid)  # released, or completed by another server meanwhile
                continue
            payload = fields.get(b"p", b"")
            job = JobRecord(int(fields[b"id"]), fields[b"s"].decode(), fields[b"o"].decode(), key, payload, len(payload))
            if counts:
                attempts, failures, losses, suspect = (int(x) for x in counts.split())
                job.attempts, job.failures, job.losses, job.suspect = attempts, failures, losses, bool(suspect)
            servers_lost = reclaimed.get(eid, 1) - 1
            if servers_lost:
                job.suspect = True
            with self._held_lock:
                self._held[job.id] = (queue, eid)
            if servers_lost >= max_lost:
                job.state, job.rc = JobState.FAILED, ResultCode.ERROR_RPC
                job.error = (
                    f"the grid servers holding it were lost {servers_lost} times: the job crashes or hangs them"
                )
                self.updated(job)  # stored (the job's home hears of it), then told to this server's sessions
                failed.append(job)
                continue
            jobs.append(job)
        if failed:
            feed.remote_results(failed)
        if gone:
            self._redis.xack(queue, _GROUP, *gone)
            self._redis.xdel(queue, *gone)
        self.pulled += len(jobs)
        refused = set(feed.leased(jobs)) if jobs else set()
        if refused:
            for job in jobs:
                if job.id in refused:
                    with self._held_lock:
                        held_entry = self._held.pop(job.id, None)
                    if held_entry is not None:
                        self._hand_back(*held_entry)

    def _notices(self, feed: Feed, entries: Any) -> None:
        """Results other servers stored for this server's sessions."""
        prefix = self.prefix
        notices = [(f[b"s"].decode(), f[b"id"].decode()) for _, f in entries if b"id" in f]
        if notices:
            pipe = self._reader_redis.pipeline(transaction=False)
            for session, job_id in notices:
                pipe.hget(f"{prefix}r:{session}", job_id)
            jobs = [
                unpack_result(JobRecord(int(job_id), session, "", ("", ""), None, 0), packed)
                for (session, job_id), packed in zip(notices, pipe.execute(), strict=True)
                if packed
            ]
            if jobs:
                feed.remote_results(jobs)
        ids = [eid for eid, _ in entries]
        self._reader_redis.xack(self._inbox, _GROUP, *ids)
        self._reader_redis.xdel(self._inbox, *ids)

    # ---- maintenance: leases, take-overs, status ----

    def _maintain(self, feed: Feed, demand: dict[Key, int]) -> None:
        r = self._reader_redis
        with self._held_lock:
            held = list(self._held.values())
        by_queue: dict[str, list[Any]] = {}
        for queue, eid in held:
            by_queue.setdefault(queue, []).append(eid)
        pipe = r.pipeline(transaction=False)
        for queue, eids in by_queue.items():
            for i in range(0, len(eids), 1000):
                pipe.xclaim(queue, _GROUP, self.server, 0, eids[i : i + 1000], justid=True)
        status = feed.status()
        status.pop("backend", None)
        pipe.hset(self.prefix + "servers", self.server, json.dumps({"ts": time.time(), "pid": os.getpid(), **status}))
        for session in feed.local_sessions():
            for name in ("s", "sj", "r", "jc"):
                pipe.expire(f"{self.prefix}{name}:{session}", self._ttl)
        pipe.execute()
        idle = int(self._limits.lease_ttl * 1000)
        for key, count in demand.items():
            queue = self.queue(key)
            self._ensure_group(queue)
            reply = r.xautoclaim(queue, _GROUP, self.server, idle, "0-0", count=min(count, 1000))
            entries = reply[1] if len(reply) > 1 else []
            if not entries:
                continue
            pipe = r.pipeline(transaction=False)
            for eid, _ in entries:
                pipe.xpending_range(queue, _GROUP, min=eid, max=eid, count=1)
            counts = {}
            for (eid, _), pending in zip(entries, pipe.execute(), strict=True):
                if pending:
                    counts[eid.decode()] = int(pending[0]["times_delivered"])
            self.reclaimed += len(entries)
            _log.info("grid redis: took over %d job(s) of %s from a lost grid server", len(entries), queue)
            self._leased(feed, queue, entries, reclaimed=counts)

    def _hand_back(self, queue: str, entry: str) -> None:
        self._scripts["HAND_BACK"](args=[self.prefix, queue, entry])
        self.handed_back += 1

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
            job = JobRecord(int(job_id), session, owner, self._key(queue), None, 0)
            packed = results.get(job_id)
            if packed is not None:
                unpack_result(job, packed)
            jobs.append(job)
        return jobs

    def grid_status(self) -> dict[str, Any]:
        r = self._redis
        now = time.time()
        fresh = 3 * _STATUS_PERIOD + self._limits.lease_ttl
        servers = []
        registry: dict[Any, Any] = r.hgetall(self.prefix + "servers")  # type: ignore[assignment]
        members: set[Any] = r.smembers(self.prefix + "queues")  # type: ignore[assignment]
        for server, raw in sorted(registry.items()):
            info = json.loads(raw)
            if now - info.get("ts", 0) <= fresh:
                servers.append({"server": server.decode(), **info})
        queues = sorted(q.decode() for q in members)
        pipe = r.pipeline(transaction=False)
        for queue in queues:
            pipe.xlen(queue)
            pipe.xpending(queue, _GROUP)
        replies = pipe.execute()
        out = []
        for i, queue in enumerate(queues):
            length, pending = replies[2 * i], replies[2 * i + 1]
            leased = int(pending["pending"]) if isinstance(pending, dict) else 0
            service, version = self._key(queue)
            out.append({"service_id": service, "service_version": version, "queued": length - leased, "leased": leased})
        return {"backend": self.status(), "servers": servers, "queues": out}

    def status(self) -> dict[str, Any]:
        with self._held_lock:
            held = len(self._held)
        return {
            "name": self.name,
            "durable": self.durable,
            "url": _safe_url(self.url),
            "prefix": self.prefix,
            "server": self.server,
            "leased_here": held,
            "pulled": self.pulled,
            "reclaimed": self.reclaimed,
            "handed_back": self.handed_back,
            "commits": self.commits,
            "errors": self.errors,
            "pending": self.pending,
        }

    # ---- life cycle ----

    def close(self) -> None:
        """Stop reading, give the jobs held here back to the queue (the other servers run them at once), store
        what is pending, disconnect."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._cond:
            self._poke = True
            self._cond.notify()
        if self._reader is not None:
            self._reader.join(timeout=2 * _STATUS_PERIOD + 5)
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
        with self._cond:
            if not self._closing:
                self._ops += [("hand_back", queue, entry) for queue, entry in held]
                self.handed_back += len(held)
                self._record(len(held))
        super().close()

    def _close_storage(self) -> None:
        try:
            self._redis.hdel(self.prefix + "servers", self.server)
            self._redis.delete(self._inbox)
        except redis.RedisError as exc:
            _log.warning("grid redis %s: not cleaned up at close: %s", _safe_url(self.url), exc)
        self._redis.close()
        self._reader_redis.close()


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
