-- Stop a running bulk operation; returns {'ok'}, {'missing'} or {'finished', state}.
-- KEYS: the operation's hash, the running set.
-- ARGV: operation id, now ms.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'missing'}
end
if state ~= 'running' then
  return {'finished', state}
end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated', ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
return {'ok'}
