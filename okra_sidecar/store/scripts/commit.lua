-- Apply one engine turn if nobody else changed the instance since it was loaded.
-- KEYS: instance, inbox, history, work stream, timers, the partition's outbox, then the status
--       indexes in InstanceStatus order (STATUS_SLOT maps a status to its KEYS slot), then
--       the finished-time index (FINISHED_INDEX).
-- ARGV: instance id, expected revision, number of field arguments (n), new status, consumed
--       inbox ids (JSON), wake-at ms or '', requeue '1'/'0', number of history events (m),
--       index member, extras (JSON, or '' when the turn has none; see below), work entry ids
--       to acknowledge (JSON, or ''), the engine's consumer group; then n arguments of
--       fields and values for the hash (the next revision among them), m history events,
--       and the reset points' task and JSON pairs (as many as the extras' `points` says).
--       Fields and events are plain arguments, not JSON lists: nothing to decode here.
-- Finishing releases the instance's admission in its limit scope ('lim', 'lwf'), another
-- slot: through the outbox, which the relay applies (release.lua); on a single Redis, here,
-- when the extras' `release` names the scope's keys (the scope and workflow key it expects
-- and the KEYS slot of its active set, then its held hash and workflow set).
local cur = redis.call('HMGET', KEYS[1], 'rev', 'status', 'lim', 'lwf')
if cur[1] ~= ARGV[2] then
  return 0
end
local field_count = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 13, 12 + field_count))
-- The fields carry the next revision, ARGV[2] + 1 (TurnStore.commit_turn).
announce(KEYS[1], (tonumber(ARGV[2]) or 0) + 1, ARGV[4])
for _, entry in ipairs(cjson.decode(ARGV[5])) do
  redis.call('XDEL', KEYS[2], entry)
end
if ARGV[6] ~= '' then
  -- LT keeps an earlier wake-up (and adds a new one): a spurious turn is harmless,
  -- a missed one is not.
  redis.call('ZADD', KEYS[5], 'LT', ARGV[6], ARGV[1])
end
if ARGV[7] == '1' then
  redis.call('XADD', KEYS[4], '*', 'i', ARGV[1])
end
if ARGV[11] and ARGV[11] ~= '' then
  local acks = cjson.decode(ARGV[11])
  redis.call('XACK', KEYS[4], ARGV[12], unpack(acks))
  redis.call('XDEL', KEYS[4], unpack(acks))
end
local x = nil
if ARGV[10] and ARGV[10] ~= '' then
  x = cjson.decode(ARGV[10])
end
local old, new = cur[2], ARGV[4]
if old ~= new then
  reindex(ARGV[9], old, new)
  if FINISHED[new] and not FINISHED[old] then
    -- The end time is among the fields just written ('completed'): no need to read it back.
    local completed = nil
    for i = 13, 12 + field_count, 2 do
      if ARGV[i] == 'completed' then
        completed = ARGV[i + 1]
      end
    end
    completed = completed or redis.call('HGET', KEYS[1], 'completed')
    redis.call('ZADD', KEYS[FINISHED_INDEX], completed, ARGV[9])
    if cur[3] then
      release_admission(KEYS[6], ARGV[1], cur[3], cur[4], x and x.release)
    end
  end
end
for i = 13 + field_count, 12 + field_count + tonumber(ARGV[8]) do
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[i])
end
-- Extras, only for turns that have them (so plain turns pay nothing): effects for the
-- executors, events to publish and the outcome for a parent awaiting this child (both
-- through the partition's outbox), results for the instance's own inbox, listen
-- subscriptions and reset points. Slots are indexes into KEYS.
if x then
  if x.effects then
    for _, effect in ipairs(x.effects) do
      redis.call('XADD', KEYS[x.effectSlot], '*', 'i', ARGV[1], 'e', effect)
    end
  end
  if x.events then
    for _, event in ipairs(x.events) do
      -- Published through the outbox: the events stream is in another slot.
      redis.call('XADD', KEYS[6], '*', 'k', 'publish', 'e', event)
    end
  end
  if x.inbox then
    for _, event in ipairs(x.inbox) do
      redis.call('XADD', KEYS[2], '*', 'e', event)
    end
    if ARGV[7] ~= '1' then
      redis.call('XADD', KEYS[4], '*', 'i', ARGV[1])
    end
  end
  if x.subs then
    resubscribe(KEYS[1], ARGV[1], x.subs.old, x.subs.new, x.subs.record)
  end
  if x.parent then
    notify_parent(KEYS[6], x.parent)
  end
  if x.points then
    -- Reset points: x.points pairs of task and JSON after the history events. Only the
    -- first per task is kept; one past the instance's budget is recorded empty (not kept),
    -- so that Reset can say why. `bytes` is written with the first points, so its absence
    -- says there are none yet: then all of them go in one HSET, with no per-task check (an
    -- instance's first turn, which the caller marks `pointsFirst`: no need to look).
    local key = KEYS[x.pointSlot]
    local used = false
    if not x.pointsFirst then
      used = redis.call('HGET', key, 'bytes')
    end
    local fresh = not used
    used = tonumber(used or '0')
    local fields = {}
    local first = 13 + field_count + tonumber(ARGV[8])
    for i = first, first + 2 * x.points - 1, 2 do
      local point = ARGV[i + 1]
      if used + #point > x.pointBudget then
        point = ''
      end
      if fresh then
        fields[#fields + 1] = ARGV[i]
        fields[#fields + 1] = point
        used = used + #point
      elseif redis.call('HSETNX', key, ARGV[i], point) == 1 then
        used = used + #point
      end
    end
    redis.call('HSET', key, 'bytes', used, unpack(fields))
  end
end
return 1
