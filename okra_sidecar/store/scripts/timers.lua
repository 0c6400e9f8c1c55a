-- Move every due timer to its partition's work stream; exactly one sidecar moves each.
-- KEYS: the n timer sets, then the n work streams in the same order.
-- ARGV: n, now ms, most timers to move per set.
local n = tonumber(ARGV[1])
local moved = 0
for p = 1, n do
  local due = redis.call('ZRANGEBYSCORE', KEYS[p], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[p], id)
    redis.call('XADD', KEYS[n + p], '*', 'i', id)
    moved = moved + 1
  end
end
return moved
