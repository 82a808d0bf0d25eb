//! The Lua scripts. Every state change and the event that reports it happen
//! in one script, so watchers never see a change without its event or an
//! event without its change. Expiry is decided by the server clock (`TIME`),
//! never by the client's.
//!
//! Scripts touch only keys of one namespace, which share a hash tag and so a
//! cluster slot. Redis 7 replicates script effects, which is what makes
//! calling `TIME` before writing allowed; on Redis 5 and 6 the prelude asks
//! for effects replication explicitly.

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

-- HGET that treats a key holding something else (not a hash) as absent.
local function hget(key, field)
  local v = redis.pcall('HGET', key, field)
  if type(v) == 'string' then return v end
  return false
end

-- Appends one event; `seq` numbers the namespace's events 1, 2, 3, ... so a
-- watcher can tell a gap (trimmed stream) or a reset (server lost its data).
local function emit(events, seqkey, maxlen, kind, name, instance, record)
  local seq = redis.call('INCR', seqkey)
  if record then
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
      'seq', seq, 'type', kind, 'name', name, 'instance', instance, 'record', record)
  else
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
      'seq', seq, 'type', kind, 'name', name, 'instance', instance)
  end
end

-- Removes a due `name`. Only the call whose ZREM removed the member reports
-- Expired: however many handles sweep, the event is appended once.
local function expire(index, events, seqkey, maxlen, peer, name)
  if redis.call('ZREM', index, name) == 1 then
    local inst = hget(peer, 'instance')
    redis.call('DEL', peer)
    if inst then emit(events, seqkey, maxlen, 'expired', name, inst, false) end
    return 1
  end
  return 0
end
"#;

/// KEYS: index, events, seq, peer.
/// ARGV: maxlen, name, instance, record JSON, ttl ms, exclusive ('1'/'0'), grace ms.
/// Returns `{'ok'}` or `{'taken', holder_instance}`.
const PUBLISH: &str = r#"
local index, events, seqkey, peer = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, name, inst, rec = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, exclusive, grace = tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local now = now_ms()
local live, holder, current = false, false, false
local score = redis.call('ZSCORE', index, name)
if score then
  if tonumber(score) > now then
    holder = hget(peer, 'instance')
    current = hget(peer, 'record')
    live = holder ~= false
  else
    -- Expired but not swept yet: report it before the name is reused.
    expire(index, events, seqkey, maxlen, peer, name)
  end
end
if live and exclusive and holder ~= inst then
  return {'taken', holder}
end
local t = redis.call('TYPE', peer)
if t.ok ~= 'hash' and t.ok ~= 'none' then redis.call('DEL', peer) end
local expires = now + ttl
redis.call('HSET', peer, 'instance', inst, 'record', rec, 'expires', num(expires))
redis.call('PEXPIREAT', peer, num(expires + grace))
redis.call('ZADD', index, num(expires), name)
if not live then
  emit(events, seqkey, maxlen, 'joined', name, inst, rec)
elseif current ~= rec then
  emit(events, seqkey, maxlen, 'updated', name, inst, rec)
end
return {'ok'}
"#;

/// KEYS: index, events, seq, peer. ARGV: maxlen, name, instance, ttl ms, grace ms.
/// Returns 1 if `instance` owns the live name (expiry extended), else 0.
const REFRESH: &str = r#"
local index, events, seqkey, peer = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, name, inst = ARGV[1], ARGV[2], ARGV[3]
local ttl, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local score = redis.call('ZSCORE', index, name)
if not score then return 0 end
if tonumber(score) <= now then
  expire(index, events, seqkey, maxlen, peer, name)
  return 0
end
if hget(peer, 'instance') ~= inst then return 0 end
local expires = now + ttl
redis.call('HSET', peer, 'expires', num(expires))
redis.call('PEXPIREAT', peer, num(expires + grace))
redis.call('ZADD', index, num(expires), name)
return 1
"#;

/// KEYS: index, events, seq, peer. ARGV: maxlen, name, instance.
/// Returns 1 if the instance's record was removed (Left emitted), else 0.
const UNPUBLISH: &str = r#"
local index, events, seqkey, peer = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, name, inst = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local score = redis.call('ZSCORE', index, name)
if not score then return 0 end
if tonumber(score) <= now then
  expire(index, events, seqkey, maxlen, peer, name)
  return 0
end
if hget(peer, 'instance') ~= inst then return 0 end
redis.call('ZREM', index, name)
redis.call('DEL', peer)
emit(events, seqkey, maxlen, 'left', name, inst, false)
return 1
"#;

/// KEYS: index, events, seq, sweepers.
/// ARGV: maxlen, peer key prefix, limit, sweeper id, sweeper entry ttl ms.
/// Removes up to `limit` due members, one `expired` event each; notes the
/// calling handle as a sweeper of the namespace until `now + ttl`. Returns
/// `{due, sweepers}`: how many were due (the caller calls again while that
/// equals `limit`) and how many handles sweep the namespace (which paces
/// the caller's next sweep).
const SWEEP: &str = r#"
local index, events, seqkey, sweepers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, prefix, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local me, lease = ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', index, '-inf', num(now), 'LIMIT', 0, limit)
for _, name in ipairs(due) do
  expire(index, events, seqkey, maxlen, prefix .. name, name)
end
local t = redis.call('TYPE', sweepers)
if t.ok ~= 'zset' and t.ok ~= 'none' then redis.call('DEL', sweepers) end
redis.call('ZREMRANGEBYSCORE', sweepers, '-inf', num(now))
redis.call('ZADD', sweepers, num(now + lease), me)
redis.call('PEXPIREAT', sweepers, num(now + lease))
return {#due, redis.call('ZCARD', sweepers)}
"#;

/// KEYS: index. ARGV: literal prefix (may be empty).
/// Returns the live names starting with the prefix (unsorted).
const NAMES: &str = r#"
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
/// Returns `name, record-or-nil` pairs for the names that are live.
const FETCH: &str = r#"
local now = now_ms()
local out = {}
for i = 2, #ARGV do
  local name = ARGV[i]
  -- One read per name: the hash keeps its own expiry in step with the index.
  local v = redis.pcall('HMGET', ARGV[1] .. name, 'record', 'expires')
  if type(v) == 'table' and v[2] and (tonumber(v[2]) or 0) > now then
    out[#out + 1] = name
    out[#out + 1] = type(v[1]) == 'string' and v[1] or false
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
