//! The Lua scripts. Every state change and the event that reports it happen
//! in one script, so watchers never see a change without its event or an
//! event without its change. Expiry is decided by the server clock (`TIME`),
//! never by the client's.
//!
//! Scripts touch only keys of one namespace, which share a hash tag and so a
//! cluster slot. Redis 7 replicates script effects, which is what makes
//! calling `TIME` before writing allowed; on Redis 5 and 6 the prelude asks
//! for effects replication explicitly.
//!
//! # Never half-applied
//!
//! Redis does not roll a script back when a command in it fails: whatever it
//! wrote before the failure stays. So every script checks its arguments and
//! the type of every key it writes (`TYPE`, and that the event counter holds
//! an integer) *before its first write*, and after those checks issues only
//! writes that cannot fail. A failed check either
//!
//! - ends the script with an error reply `MASSECORRUPT <key> holds …` or
//!   `MASSEBADARG …` and nothing written (unpublish, sweep, names), which the
//!   Rust side turns into an [`Error::Registry`](masse_core::Error::Registry)
//!   naming the key; or
//! - is repaired (publish and refresh: the writers that own a name): the
//!   wrong-typed key is deleted and rebuilt, and the script's reply lists what
//!   it repaired so that the handle logs a warning. A corrupted index or
//!   event stream therefore never makes a name unpublishable: a corrupted
//!   index is repaired by the next heartbeat of any live node, and every
//!   other live node puts its own entry back on its next heartbeat (its
//!   record hash still says it owns the name); a corrupted event stream or
//!   counter by the next publish, or the next heartbeat that takes the full
//!   path (see [`REFRESH`]). Replacing the event stream also bumps the event
//!   counter by one, so every watcher sees a gap and re-lists (`Resync`).
//!
//! # Malformed entries
//!
//! An entry the scripts cannot read (a peer key that is not a hash, a record
//! that is not JSON or names another peer, an instance id that is not 32 hex
//! digits, an index member scored `+inf`, which masse never writes) affects
//! only itself. Once due, a sweep removes it like any other; an `Expired`
//! event is appended only for an entry a lookup could have returned (a
//! readable instance id and a JSON record naming this peer), so a garbage
//! entry disappears without a bogus event, and the sweep's reply names it so
//! the handle can log it.

use std::sync::LazyLock;

use redis::Script;

/// Helpers every script starts with.
const PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integer milliseconds as a string without exponent.
local function num(n)
  return string.format('%.0f', n)
end

-- A finite number >= 0 (or > 0 if `positive`), else nil.
local function number(v, positive)
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge or n < 0 then return nil end
  if positive and n <= 0 then return nil end
  return n
end

local function badarg(what, v)
  return redis.error_reply('MASSEBADARG ' .. what .. ' is ' .. string.format('%q', tostring(v)))
end

local function instance_id(v)
  return type(v) == 'string' and #v == 32 and string.match(v, '^%x+$') ~= nil
end

-- HGET that treats a key holding something else (not a hash) as absent.
local function hget(key, field)
  local v = redis.pcall('HGET', key, field)
  if type(v) == 'string' then return v end
  return false
end

-- A description of what is wrong with `key` if it exists with a type other
-- than `want`, else nil.
local function bad_type(key, want)
  local t = redis.call('TYPE', key).ok
  if t ~= want and t ~= 'none' then
    return key .. ' holds a ' .. t .. ', not a ' .. want
  end
  return nil
end

-- The problems with the namespace's shared keys: `{key, description}` each.
local function inspect(index, events, seqkey)
  local out = {}
  local p = bad_type(index, 'zset')
  if p then out[#out + 1] = {index, p} end
  p = bad_type(events, 'stream')
  if p then out[#out + 1] = {events, p} end
  p = bad_type(seqkey, 'string')
  if not p then
    local v = redis.call('GET', seqkey)
    if v and not (#v <= 18 and string.match(v, '^%d+$')) then
      p = seqkey .. ' holds ' .. string.format('%q', string.sub(v, 1, 40)) .. ', not an event count'
    end
  end
  if p then out[#out + 1] = {seqkey, p} end
  return out
end

-- The error reply for problems found by `inspect`, before any write.
local function corrupt(problems)
  local parts = {}
  for _, p in ipairs(problems) do parts[#parts + 1] = p[2] end
  return redis.error_reply('MASSECORRUPT ' .. table.concat(parts, '; ') ..
    ' (a publish or refresh in the namespace repairs it)')
end

-- Deletes the keys `inspect` found wrong and returns their descriptions.
-- A replaced event stream may have held events nobody read: the counter
-- skips one, so that every watcher sees a gap and re-lists. A replaced
-- counter restarts above the newest surviving event, for the same reason.
local function repair(problems, events, seqkey)
  local notes, stream_lost, counter_lost = {}, false, false
  for _, p in ipairs(problems) do
    redis.call('DEL', p[1])
    notes[#notes + 1] = p[2]
    if p[1] == events then stream_lost = true end
    if p[1] == seqkey then counter_lost = true end
  end
  if counter_lost and not stream_lost then
    local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
    local top = 0
    if last[1] then
      local f = last[1][2]
      for i = 1, #f, 2 do
        if f[i] == 'seq' then top = tonumber(f[i + 1]) or 0 end
      end
    end
    redis.call('SET', seqkey, num(top + 1))
  elseif stream_lost then
    redis.call('INCR', seqkey)
  end
  return notes
end

-- The instance of `peer` if a lookup could have returned its record (a
-- readable instance id and a JSON record naming this namespace and peer),
-- else false.
local function readable(peer, name)
  local inst = hget(peer, 'instance')
  if not instance_id(inst) then return false end
  local rec = hget(peer, 'record')
  if not rec then return false end
  local ok, t = pcall(cjson.decode, rec)
  if not ok or type(t) ~= 'table' or t.name ~= name then return false end
  local ns = string.match(peer, '{([^}]*)}')
  if ns and t.namespace ~= ns then return false end
  return inst
end

-- Appends one event; `seq` numbers the namespace's events 1, 2, 3, ... so a
-- watcher can tell a gap (trimmed stream) or a reset (server lost its data).
--
-- A new stream (the first event, or the old stream was deleted or flushed)
-- gets an explicit first id, `<ms>-<microsecond within the ms × 1000>`: `*`
-- would give `<ms>-0`, and a watcher that read an entry of the old stream in
-- that same millisecond asks for ids after it, so it would never see this
-- one. Entries of the old stream in this millisecond came at an earlier
-- microsecond (a flush or delete came in between), so they lie below,
-- unless the server clock stepped back.
local function first_id()
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  return num(tonumber(t[1]) * 1000 + math.floor(us / 1000)) .. '-' .. num((us % 1000) * 1000)
end

local function emit(events, seqkey, maxlen, kind, name, instance, record)
  local seq = redis.call('INCR', seqkey)
  local id = '*'
  if redis.call('EXISTS', events) == 0 then id = first_id() end
  if record then
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, id,
      'seq', seq, 'type', kind, 'name', name, 'instance', instance, 'record', record)
  else
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, id,
      'seq', seq, 'type', kind, 'name', name, 'instance', instance)
  end
end

-- Removes a due `name`. Only the call whose ZREM removed the member reports
-- Expired: however many handles sweep, the event is appended once. Returns 0
-- if another call removed it, 1 if Expired was reported, 2 if the entry was
-- unreadable and removed without an event.
local function expire(index, events, seqkey, maxlen, peer, name)
  if redis.call('ZREM', index, name) == 1 then
    local inst = readable(peer, name)
    redis.call('DEL', peer)
    if inst then
      emit(events, seqkey, maxlen, 'expired', name, inst, false)
      return 1
    end
    return 2
  end
  return 0
end

-- Where `name` stands: 'live', 'due' (expired, not swept yet), 'orphan' (not
-- in the index, yet its hash holds a live record: the index was lost and
-- rebuilt) or 'absent'. An index that is not a sorted set counts as empty.
local function standing(index, peer, name, now)
  local score = redis.pcall('ZSCORE', index, name)
  if type(score) == 'string' then
    if (tonumber(score) or 0) > now then return 'live' end
    return 'due'
  end
  local e = tonumber(hget(peer, 'expires') or '')
  if e and e > now and instance_id(hget(peer, 'instance')) then return 'orphan' end
  return 'absent'
end

-- The checks every writer makes of its common arguments.
local function check_maxlen(v)
  return type(v) == 'string' and #v <= 18 and string.match(v, '^%d+$') ~= nil
end
"#;

/// KEYS: index, events, seq, peer.
/// ARGV: maxlen, name, instance, record JSON, ttl ms, exclusive ('1'/'0'), grace ms.
/// Returns `{'ok', '', now, repaired...}` or `{'taken', holder_instance, now,
/// repaired...}`, where `now` is the server time (ms) and each `repaired`
/// describes a wrong-typed key it deleted and rebuilt.
const PUBLISH: &str = r#"
local index, events, seqkey, peer = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, name, inst, rec = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, exclusive, grace = number(ARGV[5], true), ARGV[6] == '1', number(ARGV[7])
if not check_maxlen(maxlen) then return badarg('maxlen', maxlen) end
if not ttl then return badarg('ttl', ARGV[5]) end
if not grace then return badarg('grace', ARGV[7]) end
if not instance_id(inst) then return badarg('instance', inst) end
if type(rec) ~= 'string' or rec == '' then return badarg('record', rec) end
local now = now_ms()
local problems = inspect(index, events, seqkey)
local peer_problem = bad_type(peer, 'hash')
-- Checked: from here on, only writes that cannot fail.
local notes = repair(problems, events, seqkey)
if peer_problem then
  redis.call('DEL', peer)
  notes[#notes + 1] = peer_problem
end
local live, holder, current = false, false, false
local st = standing(index, peer, name, now)
if st == 'live' or st == 'orphan' then
  holder = hget(peer, 'instance')
  current = hget(peer, 'record')
  live = holder ~= false
elseif st == 'due' then
  -- Expired but not swept yet: report it before the name is reused.
  expire(index, events, seqkey, maxlen, peer, name)
end
if live and exclusive and holder ~= inst then
  local out = {'taken', holder, num(now)}
  for _, n in ipairs(notes) do out[#out + 1] = n end
  return out
end
local expires = now + ttl
redis.call('HSET', peer, 'instance', inst, 'record', rec, 'expires', num(expires),
  'key_expires', num(expires + grace))
redis.call('PEXPIREAT', peer, num(expires + grace))
redis.call('ZADD', index, num(expires), name)
if not live then
  emit(events, seqkey, maxlen, 'joined', name, inst, rec)
elseif current ~= rec then
  emit(events, seqkey, maxlen, 'updated', name, inst, rec)
end
local out = {'ok', '', num(now)}
for _, n in ipairs(notes) do out[#out + 1] = n end
return out
"#;

/// KEYS: index, events, seq, peer. ARGV: maxlen, name, instance, ttl ms, grace ms.
/// Returns `{'1', now, repaired...}` if `instance` owns the live name (expiry
/// extended), else `{'0', now, repaired...}`, `now` being the server time
/// (ms). An owner whose index entry is gone while its record is live (an
/// index lost and rebuilt) gets its entry back.
///
/// A heartbeat is the most frequent call of all, so the common case (the
/// caller owns the live name, the index is a sorted set) takes four
/// commands: `TIME`, one `HMGET` of the hash, the `ZADD` and one `HSET`.
/// The `ZADD` comes first and is the only write that can fail (on an index
/// of another type): if it does, nothing was written and the full checks
/// below run and repair. The key's own expiry (`PEXPIREAT`, the collector of
/// what no sweep removed) is pushed out by [`GRACE_MS`](crate::keys::GRACE_MS)
/// at a time and renewed only once less than half of that is left, noted in
/// the hash's `key_expires`; those renewals (about every 5 minutes per name)
/// also take the full path, so that any heartbeat of a node repairs a
/// damaged event stream or counter within that time, and a publish at once.
const REFRESH: &str = r#"
local index, events, seqkey, peer = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, name, inst = ARGV[1], ARGV[2], ARGV[3]
local ttl, grace = number(ARGV[4], true), number(ARGV[5])
if not check_maxlen(maxlen) then return badarg('maxlen', maxlen) end
if not ttl then return badarg('ttl', ARGV[4]) end
if not grace then return badarg('grace', ARGV[5]) end
local now = now_ms()
local expires = now + ttl
local mine = redis.pcall('HMGET', peer, 'instance', 'expires', 'key_expires')
if type(mine) == 'table' and mine[1] == inst and (tonumber(mine[2]) or 0) > now
    and (tonumber(mine[3]) or 0) >= expires + grace / 2 then
  local added = redis.pcall('ZADD', index, num(expires), name)
  if type(added) == 'number' then
    redis.call('HSET', peer, 'expires', num(expires))
    return {'1', num(now)}
  end
end
local problems = inspect(index, events, seqkey)
-- A peer key of another type is not ours: the name is lost (no write; the
-- node's publish replaces it).
local foreign_peer = bad_type(peer, 'hash') ~= nil
-- Checked: from here on, only writes that cannot fail.
local out = {'0', num(now)}
for _, n in ipairs(repair(problems, events, seqkey)) do out[#out + 1] = n end
if foreign_peer then return out end
local st = standing(index, peer, name, now)
if st == 'due' then
  expire(index, events, seqkey, maxlen, peer, name)
  return out
end
if st == 'absent' then return out end
if hget(peer, 'instance') ~= inst then return out end
redis.call('HSET', peer, 'expires', num(expires), 'key_expires', num(expires + grace))
redis.call('PEXPIREAT', peer, num(expires + grace))
redis.call('ZADD', index, num(expires), name)
out[1] = '1'
return out
"#;

/// KEYS: index, events, seq, peer. ARGV: maxlen, name, instance.
/// Returns 1 if the instance's record was removed (Left emitted), else 0.
/// A wrong-typed namespace key is an error reply, nothing written.
const UNPUBLISH: &str = r#"
local index, events, seqkey, peer = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, name, inst = ARGV[1], ARGV[2], ARGV[3]
if not check_maxlen(maxlen) then return badarg('maxlen', maxlen) end
local now = now_ms()
local problems = inspect(index, events, seqkey)
if #problems > 0 then return corrupt(problems) end
if bad_type(peer, 'hash') then return 0 end
-- Checked: from here on, only writes that cannot fail.
local st = standing(index, peer, name, now)
if st == 'due' then
  expire(index, events, seqkey, maxlen, peer, name)
  return 0
end
if st == 'absent' then return 0 end
if hget(peer, 'instance') ~= inst then return 0 end
redis.call('ZREM', index, name)
redis.call('DEL', peer)
emit(events, seqkey, maxlen, 'left', name, inst, false)
return 1
"#;

/// KEYS: index, events, seq, sweeping.
/// ARGV: maxlen, peer key prefix, limit, sweeper id, hold ms.
/// Removes up to `limit` due members (and members scored `+inf`, which
/// masse never writes), one `expired` event each for readable ones.
/// Returns `{status, due, now, next, unreadable...}`: `status` is `swept`, or
/// `busy` if another handle took the `sweeping` mark (held `hold` ms) for
/// its own sweep of what is due, so that handles waking together for the
/// same expiry do not all sweep; `due` how many were due (the caller calls
/// again while that equals `limit`); `now` the server time (ms); `next` the
/// earliest expiry left in the index (empty if none); and the names removed
/// without an event because their entry was unreadable. With nothing due it
/// writes nothing. A wrong-typed namespace key is an error reply, nothing
/// written.
const SWEEP: &str = r#"
local index, events, seqkey, mark = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, prefix, limit = ARGV[1], ARGV[2], number(ARGV[3], true)
local me, hold = ARGV[4], number(ARGV[5], true)
if not check_maxlen(maxlen) then return badarg('maxlen', maxlen) end
if not limit then return badarg('limit', ARGV[3]) end
if not hold then return badarg('hold', ARGV[5]) end
local now = now_ms()
local function next_expiry()
  local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  if first[2] then return first[2] end
  return ''
end
local due = redis.pcall('ZRANGEBYSCORE', index, '-inf', num(now), 'LIMIT', 0, limit)
if type(due) ~= 'table' or due.err then
  local problem = bad_type(index, 'zset')
  if problem then return corrupt({{index, problem}}) end
  return due
end
local foreign = redis.call('ZRANGEBYSCORE', index, '+inf', '+inf', 'LIMIT', 0, limit)
for _, name in ipairs(foreign) do due[#due + 1] = name end
if #due == 0 then return {'swept', '0', num(now), next_expiry()} end
local problems = inspect(index, events, seqkey)
if #problems > 0 then return corrupt(problems) end
local holder = redis.pcall('GET', mark)
if type(holder) == 'string' and holder ~= me then
  return {'busy', '0', num(now), ''}
end
-- Checked: from here on, only writes that cannot fail.
redis.call('SET', mark, me, 'PX', num(hold))
local out = {'swept', tostring(#due), num(now), ''}
for _, name in ipairs(due) do
  if expire(index, events, seqkey, maxlen, prefix .. name, name) == 2 then
    out[#out + 1] = name
  end
end
out[4] = next_expiry()
return out
"#;

/// KEYS: index. ARGV: literal prefix (may be empty).
/// Returns the live names starting with the prefix (unsorted).
const NAMES: &str = r#"
local problem = bad_type(KEYS[1], 'zset')
if problem then return corrupt({{KEYS[1], problem}}) end
local now = now_ms()
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. num(now), '+inf')
local prefix = ARGV[1]
if prefix == '' then return names end
local out, len = {}, #prefix
for _, n in ipairs(names) do
  if string.sub(n, 1, len) == prefix then out[#out + 1] = n end
end
return out
"#;

/// KEYS: index. ARGV: peer key prefix, name, name, ...
/// Returns `name, status, record, left` quadruples: status `ok` with the
/// record of a live name and the ms it has left (its hash's `expires` minus
/// the server's `TIME`, read in the same script), or a problem (record and
/// left empty) for a name that is live in the index or whose key is damaged:
/// `wrongtype` (the key is not a hash), `missing` (live in the index, no
/// record hash), `norecord` (live hash without a `record` field),
/// `badexpires` (its `expires` is not a number). Names that are simply not
/// live are left out.
const FETCH: &str = r#"
local now = now_ms()
local out = {}
local function add(name, status, rec, left)
  out[#out + 1] = name
  out[#out + 1] = status
  out[#out + 1] = rec or ''
  out[#out + 1] = left or ''
end
for i = 2, #ARGV do
  local name = ARGV[i]
  -- One read per name: the hash keeps its own expiry in step with the index.
  local v = redis.pcall('HMGET', ARGV[1] .. name, 'record', 'expires')
  if type(v) ~= 'table' or v.err then
    add(name, 'wrongtype')
  elseif not v[1] and not v[2] then
    local score = redis.pcall('ZSCORE', KEYS[1], name)
    if type(score) == 'string' and (tonumber(score) or 0) > now then add(name, 'missing') end
  elseif not v[2] or not tonumber(v[2]) then
    add(name, 'badexpires')
  elseif tonumber(v[2]) > now then
    if type(v[1]) == 'string' then
      add(name, 'ok', v[1], num(tonumber(v[2]) - now))
    else
      add(name, 'norecord')
    end
  end
end
return out
"#;

/// KEYS: events, seq. Returns `{seq, last_id}`: the number of events so far
/// and the id of the newest one (`0-0` if none), read atomically.
const POSITION: &str = r#"
local seq = redis.pcall('GET', KEYS[2])
if type(seq) ~= 'string' then seq = '0' end
local id = '0-0'
local last = redis.pcall('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if type(last) == 'table' and last[1] then id = last[1][1] end
return {seq, id}
"#;

/// The compiled scripts (SHA-1 computed once; `EVALSHA`, loaded on `NOSCRIPT`).
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) refresh: Script,
    pub(crate) unpublish: Script,
    pub(crate) sweep: Script,
    pub(crate) names: Script,
    pub(crate) fetch: Script,
    pub(crate) position: Script,
}

/// The scripts, shared by every handle.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        publish: with_prelude(PUBLISH),
        refresh: with_prelude(REFRESH),
        unpublish: with_prelude(UNPUBLISH),
        sweep: with_prelude(SWEEP),
        names: with_prelude(NAMES),
        fetch: with_prelude(FETCH),
        position: Script::new(POSITION),
    }
});
