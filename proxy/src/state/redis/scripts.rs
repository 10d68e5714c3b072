//! The server-side scripts: each reads and writes one task, revocation or approval atomically
//! in one round trip. Keys are `<prefix>:<kind>…`; task keys end with the pool (`n` named,
//! `v` verified) and the task id, so an id cannot reach another kind of key.
//!
//! Chain elements are `<seq>\t<prefix>\t<entry JSON>`: the prefix is empty while pending,
//! `<decision>|` once an entry appended undecided is decided (`deny|`, `deny+dry_run|`), and
//! ends with `<outcome>:<status>` once settled (`response:200`, `allow|response:200`,
//! `deny|refused:403`) — then it never changes again. Deciding and settling rewrite the
//! prefix and never re-encode the JSON (Lua's cjson would round large numbers in attributes).
//! Labels are `<at ms>\t<action that set it>`.

/// Before a decision: revoked? ended? the chain, the task's labels, the agent's labels,
/// complete? `{1}` revoked, `{3, "<until s>\t<end JSON>"}` ended, `{2}` when the data set has
/// no epoch: Redis lost its data and the background loop has not yet written back the
/// revocations and ends — nothing can be decided on it until then.
///
/// Entries the caller already holds (ARGV 6–9: the chain's `born`, a run of seqs it decoded
/// under it, and the oldest of them it holds pending) are left out when it holds them settled
/// and answered `<seq>\t<settled>` when pending — an element never changes under one `born`
/// but for its settled prefix, written once. The reply ends with the chain's `born` and, when
/// entries were left out, its first and last seq (else `""`).
///
/// With ARGV 10… it then appends the decision's own entry, pending and undecided ([`APPEND`]):
/// one round trip reads the chain and reserves the next seq, atomically, so concurrent
/// decisions of the task see each other in flight. The reply then ends with its seq, the
/// previous action's span and the `born` it was appended under (else `""` each).
///
/// KEYS: task meta, chain, task labels, agent labels, task revocations, agent revocations,
/// epoch, tombstones, ended tasks, pool LRU. ARGV: 1 task id, 2 agent id, 3 now (ms),
/// 4 idle_ttl (ms), 5 began (ms or ""), 6 held born (or ""), 7 held from, 8 held to, 9 held
/// unsettled from; to append: 10 entry JSON (or ""), 11 span, 12 task keys' lifetime (ms),
/// 13 max_actions, 14 max_tasks, 15 key prefix, 16 pool, 17 refresh period (ms).
pub fn observe() -> String {
    format!("{APPEND}{}", OBSERVE)
}

const OBSERVE: &str = r#"
local now = tonumber(ARGV[3])
local now_s = math.floor(now / 1000)
local r = redis.call('ZSCORE', KEYS[5], ARGV[1])
if r and tonumber(r) > now_s then return {1} end
r = redis.call('ZSCORE', KEYS[6], ARGV[2])
if r and tonumber(r) > now_s then return {1} end
local e = redis.call('HGET', KEYS[9], ARGV[1])
if e then
  local u = tonumber(string.match(e, '^(%d+)\t'))
  if u and u > now_s then return {3, e} end
end
local epoch = redis.call('GET', KEYS[7])
if not epoch then return {2} end
local meta = redis.call('HMGET', KEYS[1], unpack(META))
local chain = {}
local complete = 1
local born = ''
local first = ''
local last = ''
if meta[2] then
  if now - tonumber(meta[2]) >= tonumber(ARGV[4]) then
    complete = 0
  else
    if meta[4] == '1' then complete = 0 end
    born = meta[5] or ''
    local top = tonumber(meta[1])
    local len = redis.call('LLEN', KEYS[2])
    local from = tonumber(ARGV[7])
    local to = tonumber(ARGV[8])
    local pend = tonumber(ARGV[9])
    if born ~= '' and born == ARGV[6] and top and from and to and pend and from <= to then
      local low = top - len + 1
      if to < low or to > top then from = nil end
      if from and from < low then from = low end
      if from then
        -- The chain holds seqs low..top, in order (appended one by one, trimmed in front).
        first = tostring(low)
        last = tostring(top)
        local function add(a, b, short)
          if a > b then return end
          for _, v in ipairs(redis.call('LRANGE', KEYS[2], a - low, b - low)) do
            if short then
              local s, settled = string.match(v, '^(%d+)\t([^\t]*)\t')
              if s then v = s .. '\t' .. settled end
            end
            chain[#chain + 1] = v
          end
        end
        add(low, from - 1, false)
        add(math.max(from, pend), to, true)
        add(to + 1, top, false)
      end
    end
    if first == '' then chain = redis.call('LRANGE', KEYS[2], 0, -1) end
  end
else
  if redis.call('ZSCORE', KEYS[8], redis.sha1hex(ARGV[1])) then complete = 0 end
  if ARGV[5] ~= '' and tonumber(ARGV[5]) + 60000 < tonumber(epoch) then complete = 0 end
end
local seq, prev, own = '', '', ''
if ARGV[10] and ARGV[10] ~= '' then
  seq, prev, own = append(ARGV[1], ARGV[3], tonumber(ARGV[4]), ARGV[12], tonumber(ARGV[17]), tonumber(ARGV[13]), tonumber(ARGV[14]), ARGV[10], ARGV[11], ARGV[5], ARGV[15], ARGV[16], KEYS[1], KEYS[2], KEYS[10], KEYS[8], KEYS[7], KEYS[3], meta)
end
return {0, complete, chain, redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4]), born, first, last, seq, prev, own}
"#;

/// Lua for appending a pending entry to a task's chain, its seq reserved here: link spans,
/// keep the task's pool within `max_tasks` (least recently used evicted, remembered by a
/// tombstone), keep the task's keys alive. A chain created or restarted (new, evicted and
/// back, idle) gets a new `born` (the server's clock and a counter): its seqs start over, so
/// entries decoded under the old one are never taken for the new ones. Returns seq, the
/// previous action's span and the chain's `born` (all text).
///
/// The task's keys (meta, chain, labels) and its place in the pool are refreshed at most once
/// per `every` ms (the meta's `rf`), each key then kept `keep` = its TTL + `every`: so a key
/// lives at least its TTL after its last use, and an append writes three keys fewer. Always
/// when the chain is (re)created. `meta` is the task's meta as OBSERVE read it ([`META`]
/// order), or nil to read it here. Arguments to `redis.call` are strings: Lua numbers are
/// formatted on the way in.
const APPEND: &str = r#"
local META = {'seq', 'last', 'span', 'inc', 'born', 'rf'}
local function append(id, now, idle, keep, every, max_actions, cap, entry, span, began, p, pool, k_meta, k_chain, k_pool, k_tomb, k_epoch, k_labels, meta)
  if not meta then meta = redis.call('HMGET', k_meta, unpack(META)) end
  local now_n = tonumber(now)
  local seq = 0
  local prev = ''
  local inc = '0'
  local born = meta[5]
  local refresh = false
  local function new_born()
    local t = redis.call('TIME')
    refresh = true
    return t[1] .. t[2] .. '.' .. redis.call('INCR', p .. 'born')
  end
  if not meta[2] then
    born = new_born()
    local n = redis.call('ZCARD', k_pool)
    if n >= cap then
      local old = redis.call('ZPOPMIN', k_pool, n - cap + 1)
      for i = 1, #old, 2 do
        local o = old[i]
        redis.call('DEL', p .. 'tm:' .. pool .. ':' .. o, p .. 'tc:' .. pool .. ':' .. o, p .. 'tl:' .. pool .. ':' .. o)
        redis.call('ZADD', k_tomb, now, redis.sha1hex(o))
      end
      local t = redis.call('ZCARD', k_tomb)
      if t > cap then redis.call('ZREMRANGEBYRANK', k_tomb, 0, t - cap - 1) end
    end
    if redis.call('ZSCORE', k_tomb, redis.sha1hex(id)) then inc = '1' end
    local epoch = redis.call('GET', k_epoch)
    if began ~= '' and epoch and tonumber(began) + 60000 < tonumber(epoch) then inc = '1' end
  else
    seq = tonumber(meta[1]) or 0
    prev = meta[3] or ''
    inc = meta[4] or '0'
    if now_n - tonumber(meta[2]) >= idle then
      redis.call('DEL', k_chain)
      seq = 0
      prev = ''
      inc = '1'
      born = new_born()
    end
  end
  if not born then born = new_born() end
  seq = seq + 1
  local s = string.format('%d', seq)
  local len = redis.call('RPUSH', k_chain, s .. '\t\t' .. entry)
  if len > max_actions then
    redis.call('LTRIM', k_chain, -max_actions, -1)
    inc = '1'
  end
  local rf = tonumber(meta[6])
  if refresh or len == 1 or not rf or now_n - rf >= every or now_n < rf then
    redis.call('HSET', k_meta, 'seq', s, 'last', now, 'span', span, 'inc', inc, 'born', born, 'rf', now)
    redis.call('ZADD', k_pool, now, id)
    redis.call('PEXPIRE', k_meta, keep)
    redis.call('PEXPIRE', k_chain, keep)
    redis.call('PEXPIRE', k_labels, keep)
  else
    redis.call('HSET', k_meta, 'seq', s, 'last', now, 'span', span, 'inc', inc, 'born', born)
  end
  return s, prev, born
end
"#;

/// Lua for setting labels ARGV[first…] on the task (`k_task`) and the agent (`k_agent`), each
/// hash at most `maxl` labels plus `_overflow`; the agent's expired marks are swept when full.
const LABELS: &str = r#"
local function set_labels(first, k_task, k_agent, mark, maxl, ttl, now)
  for i = first, #ARGV do
    local l = ARGV[i]
    if redis.call('HEXISTS', k_task, l) == 1 or redis.call('HLEN', k_task) < maxl then
      redis.call('HSET', k_task, l, mark)
    else
      redis.call('HSET', k_task, '_overflow', mark)
    end
    if redis.call('HEXISTS', k_agent, l) == 0 and redis.call('HLEN', k_agent) >= maxl then
      local all = redis.call('HGETALL', k_agent)
      for j = 1, #all, 2 do
        local at = tonumber(string.match(all[j + 1], '^(%d+)'))
        if at and at + ttl <= now then redis.call('HDEL', k_agent, all[j]) end
      end
    end
    if redis.call('HEXISTS', k_agent, l) == 1 or redis.call('HLEN', k_agent) < maxl then
      redis.call('HSET', k_agent, l, mark)
    else
      redis.call('HSET', k_agent, '_overflow', mark)
    end
  end
  if #ARGV >= first then redis.call('PEXPIRE', k_agent, ttl) end
end
"#;

/// After a decision that *observe* did not append (the task was refused before policy, or the
/// chain was read again): append the pending entry ([`APPEND`]) with its decision, set its
/// labels.
///
/// KEYS: task meta, chain, task labels, agent labels, pool LRU, tombstones, epoch.
/// ARGV: 1 task id, 2 now (ms), 3 idle_ttl (ms), 4 task keys' lifetime (ms), 5 max_actions,
/// 6 max_tasks, 7 entry JSON, 8 span, 9 began (ms or ""), 10 agent label ttl (ms), 11 mark,
/// 12 max labels, 13 key prefix ("<prefix>:"), 14 pool, 15 refresh period (ms), 16… labels.
pub fn record() -> String {
    format!(
        "{APPEND}{LABELS}{}",
        r#"
local now = tonumber(ARGV[2])
local seq, prev = append(ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[15]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], ARGV[13], ARGV[14], KEYS[1], KEYS[2], KEYS[5], KEYS[6], KEYS[7], KEYS[3], nil)
set_labels(16, KEYS[3], KEYS[4], ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[10]), now)
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return {tonumber(seq), prev}
"#
    )
}

/// After a decision on an entry *observe* appended, when it is not a plain allow (those are
/// written with their outcome, by [`SETTLE`]): its decision (the element's prefix becomes
/// `<decision>|`, once) and the labels it sets.
///
/// KEYS: chain, task labels, agent labels. ARGV: 1 seq, 2 decision prefix (`deny|`), 3 now
/// (ms), 4 task keys' lifetime (ms), 5 agent label ttl (ms), 6 mark, 7 max labels, 8… labels.
pub fn decided() -> String {
    format!(
        "{LABELS}{}",
        r#"
local i = -1
while true do
  local v = redis.call('LINDEX', KEYS[1], i)
  if not v then break end
  local s, rest = string.match(v, '^(%d+)\t\t(.*)$')
  if s == ARGV[1] then
    redis.call('LSET', KEYS[1], i, s .. '\t' .. ARGV[2] .. '\t' .. rest)
    break
  end
  if tonumber(string.match(v, '^(%d+)')) == tonumber(ARGV[1]) then break end
  i = i - 1
end
set_labels(8, KEYS[2], KEYS[3], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[5]), tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 0
"#
    )
}

/// Settle entries, each once: scans the chain from its newest end. An element's prefix is
/// empty while pending (written then as the given text: `<outcome>`, or `allow|<outcome>` for
/// a plain allow decided after *observe* appended it) or `<decision>|` once decided (then the
/// outcome is appended); with an outcome it never changes again.
///
/// KEYS: chain. ARGV: 1 outcome (`response:200`), then pairs of seq and text for a pending
/// element.
pub const SETTLE: &str = r#"
local want = {}
local left = 0
for i = 2, #ARGV - 1, 2 do
  want[ARGV[i]] = ARGV[i + 1]
  left = left + 1
end
local i = -1
while left > 0 do
  local v = redis.call('LINDEX', KEYS[1], i)
  if not v then break end
  local s, cur, rest = string.match(v, '^(%d+)\t([^\t]*)\t(.*)$')
  if s and want[s] then
    local new = nil
    if cur == '' then
      new = want[s]
    elseif string.sub(cur, -1) == '|' then
      new = cur .. ARGV[1]
    end
    want[s] = nil
    left = left - 1
    if new then redis.call('LSET', KEYS[1], i, s .. '\t' .. new .. '\t' .. rest) end
  end
  i = i - 1
end
return 0
"#;

/// The agent's default task number, rolling over after `idle_ttl` of nobody using it.
///
/// KEYS: current, counter. ARGV: idle_ttl (ms).
pub const DEFAULT_TASK: &str = r#"
local n = redis.call('GET', KEYS[1])
if not n then
  n = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 2592000000)
  redis.call('SET', KEYS[1], n, 'PX', ARGV[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return tonumber(n)
"#;

/// Add a revocation that only lengthens, in a room that never evicts one in force.
///
/// KEYS: the kind's revocations, the revocation version. ARGV: id, expires (s), now (s),
/// capacity. Returns {1, expires} added or lengthened, {0, kept} kept, {-1, 0} full.
pub const REVOKE: &str = r#"
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
local exp = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if cur and tonumber(cur) > now then
  if tonumber(cur) >= exp then return {0, tonumber(cur)} end
elseif redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return {-1, 0} end
end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('INCR', KEYS[2])
return {1, exp}
"#;

/// End a task unless it is ended already (the first end stands), in a room that never
/// drops an end within its retention; keep its chain copy (until the end's retention) for at
/// most `keep_chains` ends, the oldest copy dropped first.
///
/// KEYS: ended tasks (hash id → `<until s>\t<end JSON>`), ends by until (sorted set), chain
/// copies by order (sorted set), this task's chain copy, the ends' version.
/// ARGV: 1 id, 2 now (s), 3 until (s), 4 end JSON, 5 chain JSON or "", 6 keep_chains,
/// 7 capacity, 8 key prefix ("<prefix>:"). Returns {1, held} ended now, {0, held} ended
/// already, {2} full.
pub const END: &str = r#"
local id = ARGV[1]
local now = tonumber(ARGV[2])
local held = redis.call('HGET', KEYS[1], id)
if held then
  local u = tonumber(string.match(held, '^(%d+)\t'))
  if u and u > now then return {0, held} end
end
if not held and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[7]) then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for i = 1, #gone do
    redis.call('HDEL', KEYS[1], gone[i])
    redis.call('ZREM', KEYS[3], gone[i])
    redis.call('DEL', ARGV[8] .. 'tec:' .. gone[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[7]) then return {2} end
end
local value = ARGV[3] .. '\t' .. ARGV[4]
redis.call('HSET', KEYS[1], id, value)
redis.call('ZADD', KEYS[2], ARGV[3], id)
local order = redis.call('INCR', KEYS[5])
local keep = tonumber(ARGV[6])
if ARGV[5] ~= '' and keep > 0 then
  redis.call('SET', KEYS[4], ARGV[5], 'EXAT', ARGV[3])
  redis.call('ZADD', KEYS[3], order, id)
  local n = redis.call('ZCARD', KEYS[3])
  if n > keep then
    local old = redis.call('ZPOPMIN', KEYS[3], n - keep)
    for i = 1, #old, 2 do redis.call('DEL', ARGV[8] .. 'tec:' .. old[i]) end
  end
end
return {1, value}
"#;

/// Shared by the approval scripts: ARGV 1 prefix ("<prefix>:"), 2 now (ms), 3 capacity,
/// 4 retention (ms). `sweep` ends what expired (returns their hashes) and forgets ended
/// approvals beyond retention or capacity; `ended` moves one out of force.
const APPROVAL_PRELUDE: &str = r#"
local P = ARGV[1]
local now = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local function unapprove(k)
  local head = redis.call('HGET', k, 'head')
  if head and redis.call('HINCRBY', P .. 'ap:heads', head, -1) <= 0 then redis.call('HDEL', P .. 'ap:heads', head) end
  if redis.call('DECR', P .. 'ap:n') < 0 then redis.call('SET', P .. 'ap:n', 0) end
end
local function ended(id, k, at, keep_digest)
  redis.call('ZREM', P .. 'ap:live', id)
  redis.call('ZREM', P .. 'ap:exp', id)
  redis.call('ZADD', P .. 'ap:ended', at, id)
  redis.call('PEXPIREAT', k, at + retention)
  local d = P .. 'apd:' .. redis.call('HGET', k, 'digest')
  if redis.call('GET', d) == id then
    if keep_digest then redis.call('PEXPIREAT', d, at + retention) else redis.call('DEL', d) end
  end
end
local function sweep()
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'ap:exp', '-inf', now)) do
    local k = P .. 'ap:' .. id
    local st = redis.call('HGET', k, 'status')
    if st == 'approved' then unapprove(k) end
    if st == 'pending' or st == 'approved' then
      local exp = tonumber(redis.call('HGET', k, 'expires'))
      redis.call('HSET', k, 'status', 'expired', 'ended', exp)
      ended(id, k, exp, true)
      table.insert(out, redis.call('HGETALL', k))
    else
      redis.call('ZREM', P .. 'ap:exp', id)
      redis.call('ZREM', P .. 'ap:live', id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', P .. 'ap:ended', '-inf', now - retention)
  local n = redis.call('ZCARD', P .. 'ap:ended')
  if n > cap then
    local old = redis.call('ZPOPMIN', P .. 'ap:ended', n - cap)
    for i = 1, #old, 2 do
      local k = P .. 'ap:' .. old[i]
      local dg = redis.call('HGET', k, 'digest')
      if dg and redis.call('GET', P .. 'apd:' .. dg) == old[i] then redis.call('DEL', P .. 'apd:' .. dg) end
      redis.call('DEL', k)
    end
  end
  if #out > 0 then redis.call('INCR', P .. 'ap:ver') end
  return out
end
"#;

/// Hold a request: the approval its digest meets, else a new pending one unless full.
/// ARGV 5 id, 6 doc, 7 digest, 8 head, 9 expires (ms). Returns {1|0|-1, hash, expired}.
pub fn hold() -> String {
    format!(
        "{APPROVAL_PRELUDE}{}",
        r#"
local expired = sweep()
local existing = redis.call('GET', P .. 'apd:' .. ARGV[7])
if existing then
  local h = redis.call('HGETALL', P .. 'ap:' .. existing)
  if #h > 0 then return {0, h, expired} end
end
if redis.call('ZCARD', P .. 'ap:live') >= cap then return {-1, {}, expired} end
local k = P .. 'ap:' .. ARGV[5]
local exp = tonumber(ARGV[9])
redis.call('HSET', k, 'doc', ARGV[6], 'status', 'pending', 'digest', ARGV[7], 'head', ARGV[8], 'requested', now, 'expires', exp)
redis.call('SET', P .. 'apd:' .. ARGV[7], ARGV[5])
redis.call('ZADD', P .. 'ap:live', now, ARGV[5])
redis.call('ZADD', P .. 'ap:exp', exp, ARGV[5])
redis.call('PEXPIREAT', k, exp + retention)
redis.call('PEXPIREAT', P .. 'apd:' .. ARGV[7], exp + retention)
redis.call('INCR', P .. 'ap:ver')
return {1, redis.call('HGETALL', k), expired}
"#
    )
}

/// Approve or deny a pending approval. ARGV 5 id, 6 "1" approve, 7 approver, 8 decided at
/// (text), 9 comment ("" none), 10 "1" has a comment. Returns {1|-1 not found|-2 not
/// pending, hash, expired}.
pub fn decide() -> String {
    format!(
        "{APPROVAL_PRELUDE}{}",
        r#"
local expired = sweep()
local id = ARGV[5]
local k = P .. 'ap:' .. id
local st = redis.call('HGET', k, 'status')
if not st then return {-1, {}, expired} end
if st ~= 'pending' then return {-2, redis.call('HGETALL', k), expired} end
if ARGV[6] == '1' then
  redis.call('HSET', k, 'status', 'approved', 'decided_by', ARGV[7], 'decided_at', ARGV[8])
  redis.call('HINCRBY', P .. 'ap:heads', redis.call('HGET', k, 'head'), 1)
  redis.call('INCR', P .. 'ap:n')
else
  redis.call('HSET', k, 'status', 'denied', 'decided_by', ARGV[7], 'decided_at', ARGV[8], 'ended', now)
  ended(id, k, now, true)
end
if ARGV[10] == '1' then redis.call('HSET', k, 'comment', ARGV[9]) else redis.call('HDEL', k, 'comment') end
redis.call('INCR', P .. 'ap:ver')
return {1, redis.call('HGETALL', k), expired}
"#
    )
}

/// Use an approved approval once, everywhere. ARGV 5 id, 6 decision id, 7 consumed at
/// (text). Returns {1, hash} used, {0} not approved (any more).
pub fn consume() -> String {
    format!(
        "{APPROVAL_PRELUDE}{}",
        r#"
local id = ARGV[5]
local k = P .. 'ap:' .. id
local h = redis.call('HMGET', k, 'status', 'expires')
if h[1] ~= 'approved' or now >= tonumber(h[2]) then return {0} end
redis.call('HSET', k, 'status', 'consumed', 'consumed_by', ARGV[6], 'consumed_at', ARGV[7], 'ended', now)
unapprove(k)
ended(id, k, now, false)
redis.call('INCR', P .. 'ap:ver')
return {1, redis.call('HGETALL', k)}
"#
    )
}

/// One approval (ARGV 5 id), or the approvals in force (ARGV 5 ""), after a sweep. Returns
/// {hashes, expired}.
pub fn read() -> String {
    format!(
        "{APPROVAL_PRELUDE}{}",
        r#"
local expired = sweep()
local out = {}
if ARGV[5] ~= '' then
  local h = redis.call('HGETALL', P .. 'ap:' .. ARGV[5])
  if #h > 0 then table.insert(out, h) end
else
  for _, id in ipairs(redis.call('ZRANGE', P .. 'ap:live', 0, -1)) do
    local h = redis.call('HGETALL', P .. 'ap:' .. id)
    if #h > 0 then table.insert(out, h) end
  end
end
return {out, expired}
"#
    )
}

/// The approval a digest is bound to. KEYS: digest key. ARGV 1 prefix.
pub const BY_DIGEST: &str = r#"
local id = redis.call('GET', KEYS[1])
if not id then return {} end
return redis.call('HGETALL', ARGV[1] .. 'ap:' .. id)
"#;
