-- Claim the instance at the cursor of a bulk operation for its lease holder.
-- KEYS: the operation's hash, its items hash.
-- ARGV: owner, instance id, now ms, lease ms.
-- Returns {'lost'} when another sidecar holds the lease, {'stopped', state} when the
-- operation is no longer running, {'acted'} when the instance was acted on already, else
-- {'new'} or {'again'} (claimed before by a holder that stopped before recording it).
local cur = redis.call('HMGET', KEYS[1], 'state', 'owner')
if cur[1] ~= 'running' then
  return {'stopped', cur[1] or 'missing'}
end
if cur[2] ~= ARGV[1] then
  return {'lost'}
end
redis.call('HSET', KEYS[1], 'lease', tonumber(ARGV[3]) + tonumber(ARGV[4]))
local item = redis.call('HGET', KEYS[2], ARGV[2])
if item == 'pending' then
  return {'again'}
end
if item then
  return {'acted'}
end
redis.call('HSET', KEYS[2], ARGV[2], 'pending')
return {'new'}
