-- Take or renew a running bulk operation's lease; returns 1 if `owner` holds it now.
-- KEYS: the operation's hash, the running set.
-- ARGV: operation id, owner, now ms, lease ms.
-- A lease that ran out (its holder stopped or stalled) goes to whoever asks next; the
-- items it left `pending` are acted on again, which every action survives (see bulk.py).
local cur = redis.call('HMGET', KEYS[1], 'state', 'owner', 'lease')
if cur[1] ~= 'running' then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
if cur[2] and cur[2] ~= ARGV[2] and tonumber(cur[3] or 0) > tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'lease', tonumber(ARGV[3]) + tonumber(ARGV[4]))
return 1
