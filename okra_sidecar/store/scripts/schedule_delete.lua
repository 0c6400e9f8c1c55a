-- Delete a schedule if nobody changed it since it was read; returns 1, 0 when it changed,
-- -1 when it is already gone.
-- KEYS: schedule hash, every-schedule set, due set.
-- ARGV: schedule id, expected revision.
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then
  return -1
end
if rev ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
