"""The circuit state machine as Redis Lua scripts: one script per transition.

Each script is :data:`PRELUDE` followed by one body. The body makes exactly the
decisions of the matching function in :mod:`.machine` (same names, same rules),
so a circuit held in Redis behaves like one held in memory, and every change is
atomic: no read-modify-write crosses the network.

The hash (``KEYS[1]``, hash-tagged ``<prefix>{<name>}`` so every script touches
one slot and runs unchanged on Redis Cluster) holds plain decimal strings only:

==============  ==============================================================
``v``           schema version, ``1``
``gen``         lineage: Redis TIME (us) when this hash was (re)created; even when
                it was missing, odd when it replaced a malformed one
``ver``         bumped on every write; orders messages within a lineage
``epoch``       bumped on every transition; fences results of older calls
``state``       ``closed`` | ``open`` | ``half_open``
``failures``    consecutive counted failures
``opened_at``   when the circuit last opened, us on the scripts' clock
``successes``   successful trial calls in this half-open episode
``next_permit`` id of the next half-open trial permit
``forced``      ``1`` while forced open
``by``          the request id of the script that made the last transition (the
                last bump of ``epoch``), ``-`` when unknown: who made the state
``trial:<id>``  a trial permit in flight: its lease expiry, us
==============  ==============================================================

Anything else (a missing field, a non-number, a number of 2^53 or more, which
Lua's doubles no longer hold exactly, an unknown state) is malformed:
the script resets the hash to a fresh closed circuit with a new lineage and an
epoch above the old one, and says so in its reply, so the caller can log it.

Every script shares this calling convention.

``KEYS``: ``[1]`` the hash; ``[2]`` its request log ``<hash>:rq`` (same slot).
``ARGV``: ``[1]`` now in us, or ``""`` to use Redis TIME; ``[2]`` the channel
to PUBLISH on; ``[3]`` failure_threshold; ``[4]`` recovery_timeout (us);
``[5]`` half_open_max_calls; ``[6]`` half-open lease (us); ``[7]`` the request
id (``""``: none); ``[8]`` request ids whose answers arrived, comma-separated;
``[9..]`` per script.

**At most once.** A client may send a script twice: redis-py retries a command
whose connection dropped, even when Redis ran it and only the answer was lost.
A script that changed the hash records its request id and answer in the request
log (a hash that expires two minutes after its last write); a second run with the
same id changes nothing and answers as the first did (note ``replayed``). The
caller acknowledges answers it received to a request's only send in its next
script, which forgets them, so the log holds only requests whose answers are
outstanding or that were resent (those simply expire: a copy of the first send may
still be on its way, redis-py retrying it, and must find its answer). ``RELEASE`` given
the id of an ``ADMIT`` whose answer never came gives back the permit it took, or,
if that ``ADMIT`` has not run yet, records it as cancelled so it takes nothing.

**Time is bounded.** Stored times never lie ahead of now: on load ``opened_at``
is clamped to now and each lease expiry to now + lease (note ``clamped``, and
the clamp is written back). So after the clock steps back an open circuit waits
at most ``recovery_timeout`` and a lease lasts at most its length.

Returns ``{admitted, permit, retry_after_us, now_us, snapshot, note, by}``:
``admitted`` is 1/0 for ``ADMIT`` and -1 for the others; ``permit`` the trial
permit taken (0: none); ``retry_after_us`` -1 when unknown; ``snapshot`` the
state after the script, encoded as by :func:`encode`; ``note`` is ``""``,
``missing`` (hash created), ``malformed:<field>`` (hash reset), ``clamped``
(stored times were ahead of now), ``replayed`` (a second run of a request),
``pushed`` (``RECONCILE`` wrote the caller's open circuit), ``lost`` (beside
``pushed``: because Redis had lost the hash or the opening the caller knew), joined by
``;``; ``by`` the request id that made the last transition (``-``: unknown).

A snapshot is PUBLISHed (same encoding, then a space and ``by``, its *origin*)
whenever a script changes the epoch, whether failures are pending, the trial
permits, the trial successes, the forced flag or the lineage; a plain change of the
failure count is not published (receivers only need to know that failures are
pending). The origin lets the process that made a transition tell it from another's,
whichever news of it comes first: the message, the script's answer, or a read.

Snapshot encoding, space-separated:
``gen ver epoch state failures opened_at successes next_permit forced trials``
where ``trials`` is ``-`` or ``id:expiry[,id:expiry...]``.
"""

from __future__ import annotations

PRELUDE = """
local KEY = KEYS[1]
local CHANNEL = ARGV[2]
local THRESHOLD = tonumber(ARGV[3])
local RECOVERY = tonumber(ARGV[4])
local MAX_CALLS = tonumber(ARGV[5])
local LEASE = tonumber(ARGV[6])
local RQ = KEYS[2]
local RID = ARGV[7]
-- Who makes this script's transitions: its request id (what its sender knows it by).
local ORIGIN = '-'
if RID ~= '' and #RID <= 100 and string.match(RID, '^[%w:._-]+$') then ORIGIN = RID end
local ACKS = ARGV[8]
-- How long a request's answer is kept for a resend of it (us): twice the longest a
-- copy of a request can reach Redis after its first send (resent for 30 s, each send
-- read for at most 30 s: LATE_CAP in redis_link).
local HORIZON = 120000000

local function server_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local NOW
if ARGV[1] ~= '' then NOW = tonumber(ARGV[1]) else NOW = server_time() end

-- %.0f keeps integers up to 2^53 exact; tostring would round them to 14 digits.
local function fmt(n) return string.format('%.0f', n) end

-- 2^53: from here on a Lua number (a double) no longer holds every integer, so
-- a stored value this large is malformed, and a computed one is kept below it.
local LIMIT = 9007199254740992
local function capped(n) return math.min(n, LIMIT - 1) end

-- A new lineage: even when the hash was missing, odd when it replaces a malformed
-- one, so every process can tell a repair (an order to start closed) from a loss.
local function fresh(epoch, repaired)
  local gen = server_time()
  gen = gen - gen % 2
  if repaired then gen = gen + 1 end
  return {gen = fmt(gen), ver = 0, epoch = epoch, state = 'closed', failures = 0,
          opened_at = 0, successes = 0, next_permit = 1, forced = 0, trials = {}, by = '-'}
end

local COUNTERS = {'ver', 'epoch', 'failures', 'opened_at', 'successes', 'next_permit'}
local STATES = {closed = true, open = true, half_open = true}

local function digits(value)
  return type(value) == 'string' and #value <= 16 and string.match(value, '^%d+$') ~= nil
         and tonumber(value) < LIMIT
end

-- The fields stored now (save() removes those it does not write), and whether the key
-- holds another type than a hash (save() must delete it first).
local STORED, NOT_A_HASH = {}, false

-- The stored snapshot, and a note: '' when it was sound, else why it was rebuilt.
local function load()
  local kind = redis.call('TYPE', KEY)['ok']
  if kind == 'none' then return fresh(math.floor(NOW / 1000)), 'missing' end
  if kind ~= 'hash' then
    NOT_A_HASH = true
    return fresh(math.floor(NOW / 1000), true), 'malformed:type'
  end
  local raw = redis.call('HGETALL', KEY)
  local h, trials, bad = {}, {}, nil
  for i = 1, #raw, 2 do
    local field, value = raw[i], raw[i + 1]
    STORED[#STORED + 1] = field
    local id = string.match(field, '^trial:(%d+)$')
    if id then
      if digits(value) and digits(id) then
        trials[#trials + 1] = {tonumber(id), tonumber(value)}
      else
        bad = bad or field
      end
    else
      h[field] = value
    end
  end
  if h.v ~= '1' then bad = bad or 'v' end
  if not digits(h.gen) then bad = bad or 'gen' end
  if not STATES[h.state or ''] then bad = bad or 'state' end
  if h.forced ~= '0' and h.forced ~= '1' then bad = bad or 'forced' end
  for _, name in ipairs(COUNTERS) do
    if not digits(h[name]) then bad = bad or name end
  end
  if #trials > 10000 then bad = bad or 'trial:*' end
  if bad then
    local old_epoch = 0
    if digits(h.epoch) then old_epoch = tonumber(h.epoch) end
    return fresh(math.max(math.floor(NOW / 1000), old_epoch + 1), true), 'malformed:' .. bad
  end
  table.sort(trials, function(a, b) return a[1] < b[1] end)
  -- Who made the last transition: an id as ORIGIN is, anything else unknown (a hash
  -- written by a version that kept no origin has none: that is no damage).
  local by = h.by
  if type(by) ~= 'string' or #by > 100 or not string.match(by, '^[%w:._-]+$') then by = '-' end
  local s = {gen = h.gen, state = h.state, forced = tonumber(h.forced), trials = trials, by = by}
  for _, name in ipairs(COUNTERS) do s[name] = tonumber(h[name]) end
  -- Times ahead of now (the clock stepped back, or a failover to a server whose
  -- clock is behind): clamped, so no wait outlasts its own length from now.
  local clamped = false
  if s.opened_at > NOW then s.opened_at, clamped = NOW, true end
  for _, t in ipairs(trials) do
    if t[2] > NOW + LEASE then t[2], clamped = capped(NOW + LEASE), true end
  end
  if clamped then return s, 'clamped' end
  return s, ''
end

local function encode(s)
  local parts = {}
  for _, t in ipairs(s.trials) do parts[#parts + 1] = fmt(t[1]) .. ':' .. fmt(t[2]) end
  local trials = '-'
  if #parts > 0 then trials = table.concat(parts, ',') end
  return table.concat({s.gen, fmt(s.ver), fmt(s.epoch), s.state, fmt(s.failures),
                       fmt(s.opened_at), fmt(s.successes), fmt(s.next_permit),
                       fmt(s.forced), trials}, ' ')
end

-- What other processes must learn at once; a bare failure count change is not.
local function signature(s)
  local ids = {}
  for _, t in ipairs(s.trials) do ids[#ids + 1] = fmt(t[1]) end
  local pending = 0
  if s.failures > 0 then pending = 1 end
  return table.concat({s.gen, fmt(s.epoch), s.state, pending, fmt(s.successes), s.forced,
                       table.concat(ids, ',')}, '|')
end

-- unpack() of more than a few thousand values fails (Lua's C stack), and a script that
-- fails half way is not rolled back: write in small batches, and never delete first.
local BATCH = 200

local function save(s)
  s.ver = s.ver + 1
  local args = {'v', '1', 'gen', s.gen, 'ver', fmt(s.ver), 'epoch', fmt(s.epoch),
                'state', s.state, 'failures', fmt(s.failures), 'opened_at', fmt(s.opened_at),
                'successes', fmt(s.successes), 'next_permit', fmt(s.next_permit),
                'forced', fmt(s.forced), 'by', s.by}
  for _, t in ipairs(s.trials) do
    args[#args + 1] = 'trial:' .. fmt(t[1])
    args[#args + 1] = fmt(t[2])
  end
  if NOT_A_HASH then redis.call('DEL', KEY) end
  local written = {}
  for i = 1, #args, BATCH do
    redis.call('HSET', KEY, unpack(args, i, math.min(i + BATCH - 1, #args)))
  end
  for i = 1, #args, 2 do written[args[i]] = true end
  local stale = {}
  for _, field in ipairs(STORED) do
    if not written[field] then stale[#stale + 1] = field end
  end
  for i = 1, #stale, BATCH do
    redis.call('HDEL', KEY, unpack(stale, i, math.min(i + BATCH - 1, #stale)))
  end
end

-- The machine's _open / _close / _half_open: each a transition this request makes.
local function open(s, failures)
  s.state, s.failures, s.opened_at, s.epoch = 'open', failures, NOW, s.epoch + 1
  s.successes, s.forced, s.trials, s.by = 0, 0, {}, ORIGIN
end

local function close(s)
  s.state, s.failures, s.opened_at, s.epoch = 'closed', 0, 0, s.epoch + 1
  s.successes, s.forced, s.trials, s.by = 0, 0, {}, ORIGIN
end

local function half_open(s)
  s.state, s.epoch, s.successes, s.forced, s.trials = 'half_open', s.epoch + 1, 0, 0, {}
  s.by = ORIGIN
end

local function without_trial(s, permit)
  local kept = {}
  for _, t in ipairs(s.trials) do
    if t[1] ~= permit then kept[#kept + 1] = t end
  end
  return kept
end

-- The request log: answers of requests that changed the hash, by request id.
local function remember(rid, admitted, permit, retry)
  redis.call('HSET', RQ, rid, table.concat({fmt(NOW + HORIZON), admitted, permit, retry}, ' '))
  redis.call('PEXPIRE', RQ, math.floor(HORIZON / 1000))
  if redis.call('HLEN', RQ) > 64 then
    local raw = redis.call('HGETALL', RQ)
    for i = 1, #raw, 2 do
      local expiry = tonumber(string.match(raw[i + 1], '^(%d+) '))
      if expiry == nil or expiry < NOW then redis.call('HDEL', RQ, raw[i]) end
    end
  end
end

local function recalled(rid)
  local record = redis.call('HGET', RQ, rid)
  if not record then return nil end
  local admitted, permit, retry = string.match(record, '^%d+ (%-?%d+) (%d+) (%-?%d+)$')
  if admitted == nil then return nil end
  return {tonumber(admitted), tonumber(permit), tonumber(retry)}
end

local function finish(s, before, changed, note, admitted, permit, retry)
  if changed then
    save(s)
    if signature(s) ~= before then redis.call('PUBLISH', CHANNEL, encode(s) .. ' ' .. s.by) end
    if RID ~= '' then remember(RID, admitted, permit, retry) end
  end
  return {admitted, permit, retry, NOW, encode(s), note, s.by}
end

if ACKS ~= '' then
  for rid in string.gmatch(ACKS, '[^,]+') do redis.call('HDEL', RQ, rid) end
end

local s, note = load()
local before = signature(s)
if note ~= '' then before = '' end

if RID ~= '' and (note == '' or note == 'clamped') then
  -- A second run of a request (the client resent it): it took effect already.
  local first = recalled(RID)
  if first then return {first[1], first[2], first[3], NOW, encode(s), 'replayed', s.by} end
end
"""

ADMIT_BODY = """
-- ADMIT: machine.admit. ARGV[9..]: none.
local changed = note ~= ''
if s.state == 'closed' then return finish(s, before, changed, note, 1, 0, -1) end
if s.state == 'open' then
  if s.forced == 1 then return finish(s, before, changed, note, 0, 0, -1) end
  local reopen_at = s.opened_at + RECOVERY
  if NOW < reopen_at then return finish(s, before, changed, note, 0, 0, reopen_at - NOW) end
  half_open(s)
  changed = true
end
local live = {}
for _, t in ipairs(s.trials) do
  if t[2] > NOW then live[#live + 1] = t end
end
if #live ~= #s.trials then changed = true end
s.trials = live
-- Every permit taken: when one frees up is unknown (-1), the trials decide.
if #live + s.successes >= MAX_CALLS then return finish(s, before, changed, note, 0, 0, -1) end
local permit = s.next_permit
live[#live + 1] = {permit, capped(NOW + LEASE)}
s.next_permit = permit + 1
return finish(s, before, true, note, 1, permit, -1)
"""

SUCCESS_BODY = """
-- SUCCESS: machine.on_success. ARGV[9] ticket epoch, ARGV[10] ticket permit.
local changed = note ~= ''
local epoch, permit = tonumber(ARGV[9]), tonumber(ARGV[10])
if epoch == s.epoch then
  if s.state == 'closed' then
    if s.failures ~= 0 then
      s.failures = 0
      changed = true
    end
  elseif s.state == 'half_open' and permit ~= 0 then
    local kept = without_trial(s, permit)
    if #kept ~= #s.trials then
      changed = true
      if s.successes + 1 >= MAX_CALLS then
        close(s)
      else
        s.trials, s.successes = kept, s.successes + 1
      end
    end
  end
end
return finish(s, before, changed, note, -1, 0, -1)
"""

FAILURE_BODY = """
-- FAILURE: machine.on_failure, ARGV[11] times over (default 1): the failures of
-- one epoch that a process gathered while its previous FAILURE was in flight.
-- ARGV[9] ticket epoch, ARGV[10] ticket permit, ARGV[11] how many failures.
-- As if applied one by one: the failure that reaches the threshold opens the
-- circuit, and the epoch it bumps fences the rest.
local changed = note ~= ''
local count = tonumber(ARGV[11] or '1')
if tonumber(ARGV[9]) == s.epoch and count ~= nil and count >= 1 then
  if s.state == 'closed' then
    changed = true
    if s.failures + count >= THRESHOLD then
      open(s, math.max(s.failures + 1, THRESHOLD))
    else
      s.failures = s.failures + count
    end
  elseif s.state == 'half_open' then
    changed = true
    open(s, s.failures + 1)
  end
end
return finish(s, before, changed, note, -1, 0, -1)
"""

RELEASE_BODY = """
-- RELEASE: machine.on_release. ARGV[9] ticket epoch, ARGV[10] ticket permit.
-- Or, with ARGV[11] the id of an ADMIT request whose answer never came: give back
-- the permit it took; if it has not run yet, it is recorded as cancelled (it will
-- take nothing when it comes). Permit ids are never reused, so a permit is removed
-- whatever the epoch.
local changed = note ~= ''
local permit = tonumber(ARGV[10])
local lost = ARGV[11] or ''
local match_epoch = tonumber(ARGV[9]) == s.epoch
if lost ~= '' then
  local first = recalled(lost)
  permit, match_epoch = 0, true
  if first and first[1] == 1 then permit = first[2] end
  redis.call('HSET', RQ, lost, table.concat({fmt(NOW + HORIZON), 0, 0, -1}, ' '))
  redis.call('PEXPIRE', RQ, math.floor(HORIZON / 1000))
end
if match_epoch and s.state == 'half_open' and permit ~= 0 then
  local kept = without_trial(s, permit)
  if #kept ~= #s.trials then
    s.trials = kept
    changed = true
  end
end
return finish(s, before, changed, note, -1, 0, -1)
"""

FORCE_BODY = """
-- FORCE: machine.force. ARGV[9] the target state.
local target = ARGV[9]
if target == 'open' then
  open(s, s.failures)
  s.forced = 1
elseif target == 'half_open' then
  half_open(s)
else
  close(s)
end
return finish(s, before, true, note, -1, 0, -1)
"""

RESET_BODY = """
-- RESET: a fresh closed circuit, keeping the epoch and permit sequences. ARGV[9..]: none.
close(s)
return finish(s, before, true, note, -1, 0, -1)
"""

READ_BODY = """
-- READ: the stored snapshot (created or repaired if need be). ARGV[9..]: none.
return finish(s, before, note ~= '', note, -1, 0, -1)
"""

RECONCILE_BODY = """
-- RECONCILE: after an outage, keep a circuit this process opened while Redis was away.
-- ARGV[9] 1 to push an open circuit; ARGV[10] the lineage the caller last saw ('' none);
-- ARGV[11] 1 if it opened while Redis was away; ARGV[12] failures; ARGV[13] opened_at (us);
-- ARGV[14] forced (0/1); ARGV[15] 1 if it was forced open while Redis was away;
-- ARGV[16] the epoch of the state its local decisions started from.
-- Rule: a circuit forced open during the outage is pushed over anything but a forced
-- open one (an operator's order is not undone by a reconnect). Any other open circuit
-- is pushed only over a closed one, and only if Redis lost the lineage the caller
-- knew (flushed, restarted empty), or the caller opened it during the outage from
-- the very state Redis still holds (same lineage and epoch), or Redis went back in
-- the lineage the caller knew (its epoch is below the one the caller saw: a failover
-- to a replica that lagged, a restart from an older snapshot lost the opening): if
-- Redis moved on meanwhile (it opened, recovered, was reset), the failures the caller
-- counted were already counted there, or belong to a state that is over. Otherwise
-- Redis wins.
local changed = note ~= ''
local push = false
local seen = tonumber(ARGV[16] or '')
local same = s.gen == ARGV[10] and s.epoch == seen
local behind = s.gen == ARGV[10] and seen ~= nil and s.epoch < seen
if ARGV[9] == '1' then
  if ARGV[15] == '1' and ARGV[14] == '1' then
    push = not (s.state == 'open' and s.forced == 1)
  else
    push = s.state == 'closed' and (s.gen ~= ARGV[10] or behind or (ARGV[11] == '1' and same))
  end
end
if push then
  local opened_at = tonumber(ARGV[13])
  open(s, tonumber(ARGV[12]))
  if opened_at < NOW then s.opened_at = opened_at end
  s.forced = tonumber(ARGV[14])
  changed = true
  if note == '' then note = 'pushed' else note = note .. ';pushed' end
  -- Written back because Redis lost what the caller knew (the hash, or the opening).
  if ARGV[10] ~= '' and (s.gen ~= ARGV[10] or behind) then note = note .. ';lost' end
end
return finish(s, before, changed, note, -1, 0, -1)
"""

ADMIT = PRELUDE + ADMIT_BODY
SUCCESS = PRELUDE + SUCCESS_BODY
FAILURE = PRELUDE + FAILURE_BODY
RELEASE = PRELUDE + RELEASE_BODY
FORCE = PRELUDE + FORCE_BODY
RESET = PRELUDE + RESET_BODY
READ = PRELUDE + READ_BODY
RECONCILE = PRELUDE + RECONCILE_BODY
