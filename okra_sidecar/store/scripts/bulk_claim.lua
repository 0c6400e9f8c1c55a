-- Claim the instance at the cursor of a bulk operation for its lease holder.
-- KEYS: the operation's hash, its items hash, its workflows hash (a bulk SIGNAL's).
-- ARGV: owner, instance id, now ms, lease ms.
-- Returns {'lost'} when another sidecar holds the lease, {'stopped', state} when the
-- operation is no longer running, {'acted'} when the instance was acted on already, else
-- {'new', workflow} or {'again', workflow} (claimed before by a holder that stopped before
-- recording it), with the workflow the instance ran when it matched ('' when not kept).
local cur = redis.call('HMGET', KEYS[1], 'state', 'owner')
if cur[1] ~= 'running' then
  return {'stopped', cur[1] or 'missing'}
end
if cur[2] ~= ARGV[1] then
  return {'lost'}
end
redis.call('HSET', KEYS[1], 'lease', tonumber(ARGV[3]) + tonumber(ARGV[4]))
local item = redis.call('HGET', KEYS[2], ARGV[2])
if item and item ~= 'pending' then
  return {'acted'}
end
local workflow = redis.call('HGET', KEYS[3], ARGV[2]) or ''
if item then
  return {'again', workflow}
end
redis.call('HSET', KEYS[2], ARGV[2], 'pending')
return {'new', workflow}
