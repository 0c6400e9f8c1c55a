-- Record what a bulk operation did to one instance and move its cursor past it.
-- KEYS: the operation's hash, its items hash, the running set.
-- ARGV: owner, instance id, outcome (done, skipped, failed), reason ('' for done), the next
--       cursor, now ms, operation id.
-- Returns 0 (and writes nothing) when the lease went to another sidecar: that one acts on
-- the instance again, and the action's own checks keep it from taking effect twice.
local cur = redis.call('HMGET', KEYS[1], 'owner', 'matched', 'state')
if cur[1] ~= ARGV[1] then
  return 0
end
if redis.call('HGET', KEYS[2], ARGV[2]) == 'pending' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
  if ARGV[4] ~= '' then
    redis.call('HINCRBY', KEYS[1], 'why:' .. ARGV[4], 1)
  end
end
redis.call('HSET', KEYS[1], 'cursor', ARGV[5], 'updated', ARGV[6])
if tonumber(ARGV[5]) >= tonumber(cur[2]) and cur[3] == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'completed')
  redis.call('SREM', KEYS[3], ARGV[7])
end
return 1
