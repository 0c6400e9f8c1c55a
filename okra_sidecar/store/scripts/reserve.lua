-- Admit one instance id against its scope's limits, before the instance is created.
-- KEYS: the scope's active set, the workflow's set, the held hash (one slot: the scope's tag).
-- ARGV: instance id, max active (0 = no limit), max per workflow (0 = no limit), workflow key.
-- Every admission is recorded, limit or none, so that a limit set later counts what runs (on
-- a single Redis a scope is counted from the first Run a limit applies to: track.lua).
-- Returns {'held', score} for an id already admitted (a retried Run), {'new', score} for a
-- fresh admission, {'active'} or {'workflow'} when that limit is reached. The score (Redis'
-- clock in µs) names this reservation: create.lua refuses it once the reconciler voided it.
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held then
  return {'held', held}
end
local max_active = tonumber(ARGV[2])
if max_active > 0 and redis.call('ZCARD', KEYS[1]) >= max_active then
  return {'active'}
end
local max_workflow = tonumber(ARGV[3])
if max_workflow > 0 and redis.call('ZCARD', KEYS[2]) >= max_workflow then
  return {'workflow'}
end
local now = redis.call('TIME')
local score = now[1] .. string.format('%06d', now[2])
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
-- The score as ZSCORE would give it: whole microseconds, below 2^53, print as they were written.
return {'new', score}
