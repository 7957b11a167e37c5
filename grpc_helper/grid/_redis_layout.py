"""How a grid lives in Redis: key names, packed results, and the Lua scripts (each step that must not be seen
half done by another server).

Keys (``P`` is the backend's prefix; one Redis database may hold several grids under different prefixes):

- ``P q:<service>\\x1f<version>``: stream of queued jobs (fields id, s = session, o = owner, p = payload), consumer
  group ``workers``; each grid server is a consumer: its pending entries are its leases;
- ``P queues``: set of the queue streams;
- ``P s:<session>``: hash (owner, home = the server holding its results stream);
- ``P sj:<session>``: hash job id -> ``"<entry id> <queue>"``: the jobs the session holds;
- ``P r:<session>``: hash job id -> packed result: completed, not acknowledged;
- ``P jc:<session>``: hash job id -> ``"attempts failures losses suspect"`` of a job that went back to the queue;
- ``P in:<server>``: stream of result notices (id, s) for the sessions whose home the server is;
- ``P servers``: hash server -> JSON status, refreshed every second or two;
- ``P ids``: the job id counter.

The scripts build key names from the prefix (a standalone Redis, not a cluster).
"""

from __future__ import annotations

import struct

from grpc_helper.grid.model import JobRecord, JobState, Key

GROUP = "workers"
DEFAULT_PREFIX = "grpc-helper:grid:"
_RESULT = struct.Struct("!BiII")  # state, rc, attempts, error length


class Layout:
    """Key names of one grid (one prefix) in a Redis database."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self.ids = prefix + "ids"
        self.queues = prefix + "queues"
        self.servers = prefix + "servers"
        self._queues: dict[Key, str] = {}
        self._keys: dict[str, Key] = {}

    def queue(self, key: Key) -> str:
        """The stream of the jobs of (service_id, service_version)."""
        name = self._queues.get(key)
        if name is None:
            name = self._queues[key] = f"{self.prefix}q:{key[0]}\x1f{key[1]}"
            self._keys[name] = key
        return name

    def key(self, queue: str) -> Key:
        """(service_id, service_version) of a queue stream."""
        key = self._keys.get(queue)
        if key is None:
            service, _, version = queue[len(self.prefix) + 2 :].partition("\x1f")
            key = self._keys[queue] = (service, version)
        return key

    def session(self, kind: str, session: str) -> str:
        """A session's hash: ``s`` (owner, home), ``sj`` (held jobs), ``r`` (results), ``jc`` (counts)."""
        return f"{self.prefix}{kind}:{session}"

    def inbox(self, server: str) -> str:
        return f"{self.prefix}in:{server}"


def pack_result(job: JobRecord) -> bytes:
    error = job.error.encode()
    return _RESULT.pack(int(job.state), job.rc, job.attempts, len(error)) + error + job.data


def unpack_result(job: JobRecord, packed: bytes) -> JobRecord:
    """Set the job's outcome from a packed result."""
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
#: The scripts, by name.
SCRIPTS = ("ACCEPT", "COMPLETE", "TAKE", "END", "ADOPT", "HAND_BACK")

_SPLIT = """
local function split(m)
  local sp = string.find(m, ' ', 1, true)
  return string.sub(m, 1, sp - 1), string.sub(m, sp + 1)
end
"""

#: ARGV: prefix, session, owner, home, queue, ttl, max_identity_jobs, max_identity_sessions, then (id, payload)
#: pairs. Returns {1} (stored), {0} (another identity's session), {2, N} (the owner's sessions hold N jobs on the
#: whole grid: these would exceed max_identity_jobs) or {3, N} (the owner has N other sessions holding jobs: one
#: more exceeds max_identity_sessions). The owner's sessions are the set ``P id:<owner>`` (empty ones leave it).
#: Every script is idempotent: a pile whose pipeline failed half-way is stored again whole.
ACCEPT = """
local P, sess, owner, home, q, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local s, sj = P .. 's:' .. sess, P .. 'sj:' .. sess
local cur = redis.call('HGET', s, 'owner')
if cur and cur ~= owner then return {0} end
if owner ~= '' then
  local mine = P .. 'id:' .. owner
  local held, new, others = 0, 0, 0
  for _, other in ipairs(redis.call('SMEMBERS', mine)) do  -- at most max_identity_sessions + 1 members
    local n = redis.call('HLEN', P .. 'sj:' .. other)
    if n == 0 and other ~= sess then
      redis.call('SREM', mine, other)
    elseif other ~= sess then
      others = others + 1
    end
    held = held + n
  end
  for i = 9, #ARGV, 2 do
    if redis.call('HEXISTS', sj, ARGV[i]) == 0 then new = new + 1 end
  end
  if new > 0 and redis.call('SISMEMBER', mine, sess) == 0 and others >= tonumber(ARGV[8]) then
    return {3, others}
  end
  if new > 0 and held + new > tonumber(ARGV[7]) then return {2, held} end
  redis.call('SADD', mine, sess)
  redis.call('EXPIRE', mine, ttl)
end
redis.call('HSET', s, 'owner', owner, 'home', home)
redis.call('SADD', P .. 'queues', q)
redis.pcall('XGROUP', 'CREATE', q, 'workers', '0', 'MKSTREAM')
for i = 9, #ARGV, 2 do
  if redis.call('HEXISTS', sj, ARGV[i]) == 0 then  -- a pile stored again after an error adds nothing twice
    local eid = redis.call('XADD', q, '*', 'id', ARGV[i], 's', sess, 'o', owner, 'p', ARGV[i + 1])
    redis.call('HSET', sj, ARGV[i], eid .. ' ' .. q)
  end
end
redis.call('EXPIRE', s, ttl)
redis.call('EXPIRE', sj, ttl)
return {1}
"""

#: ARGV: prefix, this server, ttl, then per job: session, id, packed result, entry id held here, its queue ('' if
#: none). The first outcome stands: returns how many were stored (the others were completed, cancelled or released
#: before).
COMPLETE = (
    _SPLIT
    + """
local P, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stored = 0
for i = 4, #ARGV, 5 do
  local sess, id, packed, held, hq = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local sj, r = P .. 'sj:' .. sess, P .. 'r:' .. sess
  if hq ~= '' then
    redis.call('XACK', hq, 'workers', held)
    redis.call('XDEL', hq, held)
  end
  local m = redis.call('HGET', sj, id)
  if m then
    local eid, q = split(m)
    if eid ~= held then
      redis.call('XACK', q, 'workers', eid)
      redis.call('XDEL', q, eid)
    end
    if redis.call('HSETNX', r, id, packed) == 1 then
      stored = stored + 1
      redis.call('EXPIRE', r, ttl)
      redis.call('HDEL', P .. 'jc:' .. sess, id)
      local home = redis.call('HGET', P .. 's:' .. sess, 'home')
      if home and home ~= me then
        redis.call('XADD', P .. 'in:' .. home, 'MAXLEN', '~', '1000000', '*', 'id', id, 's', sess)
      end
    end
  end
end
return stored
"""
)

#: ARGV: prefix, this server, queue, count. Takes up to ``count`` new entries of the queue for this server and
#: returns those still held by their session and not completed, 6 values each: entry id, job id, session, owner,
#: payload, counts ('' or "attempts failures losses suspect"); the others are removed from the queue.
TAKE = """
local P, me, q = ARGV[1], ARGV[2], ARGV[3]
local reply = redis.call('XREADGROUP', 'GROUP', 'workers', me, 'COUNT', ARGV[4], 'STREAMS', q, '>')
if not reply then return {} end
local out = {}
for _, e in ipairs(reply[1][2]) do
  local eid, f = e[1], e[2]
  local id, sess, owner, payload = nil, nil, '', ''
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 'id' then id = f[i + 1] elseif k == 's' then sess = f[i + 1]
    elseif k == 'o' then owner = f[i + 1] elseif k == 'p' then payload = f[i + 1] end
  end
  if id and sess and redis.call('HEXISTS', P .. 'sj:' .. sess, id) == 1
      and redis.call('HEXISTS', P .. 'r:' .. sess, id) == 0 then
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = eid, id, sess, owner, payload
    out[n + 6] = redis.call('HGET', P .. 'jc:' .. sess, id) or ''
  else
    redis.call('XACK', q, 'workers', eid)
    redis.call('XDEL', q, eid)
  end
end
return out
"""

#: ARGV: prefix, session, this server. Ends a session whose home is this server: its queued jobs are removed.
END = (
    _SPLIT
    + """
local P, sess, me = ARGV[1], ARGV[2], ARGV[3]
local s, sj = P .. 's:' .. sess, P .. 'sj:' .. sess
local home = redis.call('HGET', s, 'home')
if home and home ~= me then return 0 end
local all = redis.call('HGETALL', sj)
for i = 2, #all, 2 do
  local eid, q = split(all[i])
  redis.call('XACK', q, 'workers', eid)
  redis.call('XDEL', q, eid)
end
redis.call('DEL', s, sj, P .. 'r:' .. sess, P .. 'jc:' .. sess)
return 1
"""
)

#: ARGV: prefix, session, owner, this server, ttl. Returns {1, sj pairs, r pairs}, {1} for an unknown session,
#: {0} for another identity's.
ADOPT = """
local P, sess, owner, me, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local s = P .. 's:' .. sess
local cur = redis.call('HGET', s, 'owner')
if not cur then return {1} end
if cur ~= owner then return {0} end
redis.call('HSET', s, 'home', me)
for _, k in ipairs({s, P .. 'sj:' .. sess, P .. 'r:' .. sess, P .. 'jc:' .. sess}) do redis.call('EXPIRE', k, ttl) end
return {1, redis.call('HGETALL', P .. 'sj:' .. sess), redis.call('HGETALL', P .. 'r:' .. sess)}
"""

#: ARGV: prefix, queue, entry id. A job held by this server (closing) goes back to the queue as a new entry.
HAND_BACK = """
local P, q, eid = ARGV[1], ARGV[2], ARGV[3]
local e = redis.call('XRANGE', q, eid, eid)
redis.call('XACK', q, 'workers', eid)
redis.call('XDEL', q, eid)
if #e == 0 then return 0 end
local f = e[1][2]
local id, sess
for i = 1, #f, 2 do
  if f[i] == 'id' then id = f[i + 1] elseif f[i] == 's' then sess = f[i + 1] end
end
local sj = P .. 'sj:' .. sess
if redis.call('HGET', sj, id) ~= eid .. ' ' .. q then return 0 end
local neid = redis.call('XADD', q, '*', unpack(f))
redis.call('HSET', sj, id, neid .. ' ' .. q)
return 1
"""
