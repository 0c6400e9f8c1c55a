-- Move a partition's due timers to its work stream; exactly one sidecar moves each.
-- The work entry carries the due time ('d') so the turn can tell how late the timer ran.
-- KEYS: the partition's timer set, then its work stream.
-- ARGV: now ms, most timers to move per call.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]))
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('XADD', KEYS[2], '*', 'i', due[i], 'd', due[i + 1])
end
return #due / 2
