-- Move every due timer to its partition's work stream; exactly one sidecar moves each.
-- The work entry carries the due time ('d') so the turn can tell how late the timer ran.
-- KEYS: the n timer sets, then the n work streams in the same order.
-- ARGV: n, now ms, most timers to move per set.
local n = tonumber(ARGV[1])
local moved = 0
for p = 1, n do
  local due = redis.call('ZRANGEBYSCORE', KEYS[p], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0,
    tonumber(ARGV[3]))
  for i = 1, #due, 2 do
    redis.call('ZREM', KEYS[p], due[i])
    redis.call('XADD', KEYS[n + p], '*', 'i', due[i], 'd', due[i + 1])
    moved = moved + 1
  end
end
return moved
