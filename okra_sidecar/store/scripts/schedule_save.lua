-- Write a schedule if nobody changed it since it was read; returns the new revision,
-- 0 when it changed (or, for a new one, already exists), -1 when it is gone.
-- KEYS: schedule hash, every-schedule set, due set.
-- ARGV: schedule id, expected revision ('new' for a schedule that must not exist yet),
--       record (JSON), when a scheduler must next look at it (ms, or '' for never).
local rev = redis.call('HGET', KEYS[1], 'rev')
if ARGV[2] == 'new' then
  if rev then
    return 0
  end
  rev = '0'
elseif not rev then
  return -1
elseif rev ~= ARGV[2] then
  return 0
end
local new = tonumber(rev) + 1
redis.call('HSET', KEYS[1], 'r', ARGV[3], 'rev', new)
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
end
return new
