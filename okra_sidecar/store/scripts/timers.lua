-- Move partitions' due timers to their work streams; exactly one sidecar moves each.
-- The work entry carries the due time ('d') so the turn can tell how late the timer ran.
-- KEYS: a partition's timer set, then its work stream; on a single Redis, where every
--       partition is on one node, the same pair for each partition in turn.
-- ARGV: now ms, most timers to move per partition and call.
-- Returns how many timers were moved.
local timer_sets = {}
for k = 1, #KEYS, 2 do
  timer_sets[#timer_sets + 1] = KEYS[k]
end
-- Most ticks find no timer set at all (no instance waits on a timer): one command then.
if #timer_sets > 1 and redis.call('EXISTS', unpack(timer_sets)) == 0 then
  return 0
end
local moved = 0
for k = 1, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
    tonumber(ARGV[2]))
  for i = 1, #due, 2 do
    redis.call('ZREM', KEYS[k], due[i])
    redis.call('XADD', KEYS[k + 1], '*', 'i', due[i], 'd', due[i + 1])
  end
  moved = moved + #due / 2
end
return moved
