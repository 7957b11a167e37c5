"""The reading side of the ``redis`` backend: one thread per grid server that

- takes from the queues as many jobs as this server's workers have room for (``XREADGROUP``): each one taken is
  a lease of this server, renewed while held (``XCLAIM ... JUSTID``);
- takes over the jobs of servers that stopped renewing theirs for ``lease_ttl`` (``XAUTOCLAIM``), counting
  those losses (delivery counts);
- reads the notices of results other servers stored for this server's sessions (its inbox stream);
- publishes this server's status for the grid-wide one, and keeps its sessions' records from expiring.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from grpc_helper import ResultCode
from grpc_helper.grid._backend import Feed
from grpc_helper.grid._redis_layout import GROUP, Layout, unpack_result
from grpc_helper.grid.model import JobRecord, JobState, Key

_log = logging.getLogger("grpc_helper.grid")

#: Seconds between two publications of the server's status (and the longest a blocking read waits).
STATUS_PERIOD = 1.0
#: A server silent this long (seconds) is forgotten: its registration and its inbox are deleted.
FORGET_AFTER = 3600.0

#: A job id's entry: (queue, entry id).
Entry = tuple[str, str]


class Consumer:
    """This server's leases on the shared queue and the thread that takes, renews and takes over jobs."""

    def __init__(
        self,
        client: redis.Redis,
        reader: redis.Redis,
        layout: Layout,
        server: str,
        feed: Feed,
        *,
        take: Any,
        store_failure: Callable[[JobRecord], None],
        hand_back: Callable[[list[Entry]], None],
        ttl: Callable[[], int],
    ) -> None:
        self._redis = client  # the backend's pool: short commands
        self._reader = reader  # a connection of our own: it blocks in XREADGROUP
        self.layout = layout
        self.server = server
        self.inbox = layout.inbox(server)
        self._feed = feed
        self._limits = feed.limits
        self._take = take  # the TAKE script
        self._store_failure = store_failure
        self._hand_back = hand_back
        self._ttl = ttl
        self._held: dict[int, Entry] = {}  # job id -> its entry, for the jobs leased to this server
        self._lock = threading.Lock()
        self._groups_made: set[str] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="grid-redis-reader", daemon=True)
        self.pulled = 0
        self.reclaimed = 0
        self._next_sweep = 0.0

    # ---- leases ----

    def release(self, job_id: int) -> Entry:
        """The job held here completed: its entry (``("", "")`` if not held here)."""
        with self._lock:
            return self._held.pop(job_id, ("", ""))

    @property
    def held(self) -> int:
        return len(self._held)

    # ---- life cycle ----

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> list[Entry]:
        """Stop the thread (it wakes within ``STATUS_PERIOD``); returns the entries still held."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            held, self._held = list(self._held.values()), {}
        return held

    def _loop(self) -> None:
        next_maintenance = 0.0
        backoff = 0.1
        feed = self._feed
        while not self._stopping.is_set():
            try:
                demand = feed.demand()
                now = time.monotonic()
                if now >= next_maintenance:
                    self._maintain(demand)
                    next_maintenance = now + min(STATUS_PERIOD, self._limits.lease_ttl / 4)
                    demand = feed.demand()
                if not self._read(demand, block=False):
                    self._read(demand, block=True)
                backoff = 0.1
            except redis.RedisError as exc:
                if self._stopping.is_set():
                    return
                self._groups_made.clear()  # a stream may have been deleted: make its group again
                _log.error("grid redis: %s (retrying)", exc)
                self._stopping.wait(backoff)
                backoff = min(2.0, backoff * 2)

    # ---- reading ----

    def _read(self, demand: dict[Key, int], *, block: bool) -> bool:
        """Read the inbox and the queues this server's workers want; True if anything came."""
        r = self._reader
        self._ensure_group(self.inbox)
        wanted = {self.layout.queue(key): count for key, count in demand.items()}
        for queue in wanted:
            self._ensure_group(queue)
        replies: Any
        if block:
            streams: dict[Any, Any] = {self.inbox: ">", **dict.fromkeys(wanted, ">")}
            replies = r.xreadgroup(GROUP, self.server, streams, count=1, block=int(STATUS_PERIOD * 1000))
        else:
            pipe = r.pipeline(transaction=False)
            pipe.xreadgroup(GROUP, self.server, {self.inbox: ">"}, count=1000)
            for queue, count in wanted.items():
                self._take(args=[self.layout.prefix, self.server, queue, min(count, 10_000)], client=pipe)
            inbox, *taken = pipe.execute()
            replies = inbox or []
            for queue, flat in zip(wanted, taken, strict=True):
                if flat:
                    self._taken(queue, flat)
        got = any(taken) if not block else False
        for stream, entries in replies or []:
            if not entries:
                continue
            got = True
            name = stream.decode()
            if name == self.inbox:
                self._notices(entries)
            else:
                self._leased(name, entries, reclaimed={})
        return got

    def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_made:
            return
        try:
            self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_made.add(stream)

    def _taken(self, queue: str, flat: list[bytes]) -> None:
        """Jobs the TAKE script took from ``queue`` for this server (6 values each)."""
        key = self.layout.key(queue)
        jobs = []
        held = {}
        for i in range(0, len(flat), 6):
            eid, job_id, session, owner, payload, counts = flat[i : i + 6]
            job = JobRecord(int(job_id), session.decode(), owner.decode(), key, payload, len(payload))
            if counts:
                attempts, failures, losses, suspect = (int(x) for x in counts.split())
                job.attempts, job.failures, job.losses, job.suspect = attempts, failures, losses, bool(suspect)
            held[job.id] = (queue, eid.decode())
            jobs.append(job)
        with self._lock:
            self._held.update(held)
        self._to_scheduler(jobs)

    def _to_scheduler(self, jobs: list[JobRecord]) -> None:
        self.pulled += len(jobs)
        refused = set(self._feed.leased(jobs)) if jobs else set()
        if refused:
            with self._lock:
                back = [entry for job_id in refused if (entry := self._held.pop(job_id, None)) is not None]
            self._hand_back(back)

    def _leased(self, queue: str, replies: Any, reclaimed: dict[str, int]) -> None:
        """Jobs taken from ``queue``: those still wanted go to the scheduler, the others are removed."""
        layout = self.layout
        entries: list[tuple[str, dict[bytes, bytes]]] = [(eid.decode(), fields) for eid, fields in replies if fields]
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for _, fields in entries:
            session, job_id = fields[b"s"].decode(), fields[b"id"].decode()
            pipe.hexists(layout.session("sj", session), job_id)
            pipe.hexists(layout.session("r", session), job_id)
            pipe.hget(layout.session("jc", session), job_id)
        checks = pipe.execute()
        key = layout.key(queue)
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
            job.suspect = job.suspect or servers_lost > 0
            with self._lock:
                self._held[job.id] = (queue, eid)
            if servers_lost >= max_lost:
                job.state, job.rc = JobState.FAILED, ResultCode.ERROR_RPC
                job.error = f"the grid servers holding it were lost {servers_lost} times: the job crashes or hangs them"
                self._store_failure(job)  # stored (the job's home hears of it), then told to this server's sessions
                failed.append(job)
                continue
            jobs.append(job)
        if failed:
            self._feed.remote_results(failed)
        if gone:
            self._redis.xack(queue, GROUP, *gone)
            self._redis.xdel(queue, *gone)
        self._to_scheduler(jobs)

    def _notices(self, entries: Any) -> None:
        """Results other servers stored for this server's sessions."""
        notices = [(f[b"s"].decode(), f[b"id"].decode()) for _, f in entries if b"id" in f]
        if notices:
            pipe = self._reader.pipeline(transaction=False)
            for session, job_id in notices:
                pipe.hget(self.layout.session("r", session), job_id)
            jobs = [
                unpack_result(JobRecord(int(job_id), session, "", ("", ""), None, 0), packed)
                for (session, job_id), packed in zip(notices, pipe.execute(), strict=True)
                if packed
            ]
            if jobs:
                self._feed.remote_results(jobs)
        ids = [eid for eid, _ in entries]
        self._reader.xack(self.inbox, GROUP, *ids)
        self._reader.xdel(self.inbox, *ids)

    # ---- maintenance: leases, take-overs, status ----

    def _maintain(self, demand: dict[Key, int]) -> None:
        r = self._reader
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + 60
            self._forget_lost_servers()
        with self._lock:
            held = list(self._held.values())
        by_queue: dict[str, list[Any]] = {}
        for queue, eid in held:
            by_queue.setdefault(queue, []).append(eid)
        pipe = r.pipeline(transaction=False)
        for queue, eids in by_queue.items():  # renew the leases
            for i in range(0, len(eids), 1000):
                pipe.xclaim(queue, GROUP, self.server, 0, eids[i : i + 1000], justid=True)
        status = self._feed.status()
        status.pop("backend", None)
        pipe.hset(self.layout.servers, self.server, json.dumps({"ts": time.time(), "pid": os.getpid(), **status}))
        ttl = self._ttl()
        for session in self._feed.local_sessions():
            for kind in ("s", "sj", "r", "jc"):
                pipe.expire(self.layout.session(kind, session), ttl)
        pipe.execute()
        idle = int(self._limits.lease_ttl * 1000)
        for key, count in demand.items():  # take over what lost servers held
            queue = self.layout.queue(key)
            self._ensure_group(queue)
            reply = r.xautoclaim(queue, GROUP, self.server, idle, "0-0", count=min(count, 1000))
            entries = reply[1] if len(reply) > 1 else []
            if not entries:
                continue
            pipe = r.pipeline(transaction=False)
            for eid, _ in entries:
                pipe.xpending_range(queue, GROUP, min=eid, max=eid, count=1)
            counts = {}
            for (eid, _), pending in zip(entries, pipe.execute(), strict=True):
                if pending:
                    counts[eid.decode()] = int(pending[0]["times_delivered"])
            self.reclaimed += len(entries)
            _log.info("grid redis: took over %d job(s) of %s from a lost grid server", len(entries), queue)
            self._leased(queue, entries, reclaimed=counts)

    def _forget_lost_servers(self) -> None:
        """Delete the registration and the inbox of servers silent for ``FORGET_AFTER`` (they crashed: their
        sessions moved with their clients, or expire)."""
        registry: dict[Any, Any] = self._reader.hgetall(self.layout.servers)  # type: ignore[assignment]
        now = time.time()
        for server, raw in registry.items():
            try:
                seen = float(json.loads(raw).get("ts", 0))
            except (ValueError, AttributeError):
                seen = 0.0
            if now - seen > FORGET_AFTER:
                name = server.decode()
                self._reader.hdel(self.layout.servers, name)
                self._reader.delete(self.layout.inbox(name))
                _log.info("grid redis: forgot grid server %s (silent for %.0f s)", name, now - seen)

    def close(self) -> None:
        """Disconnect the reader's connection (after ``stop``)."""
        self._reader.close()
