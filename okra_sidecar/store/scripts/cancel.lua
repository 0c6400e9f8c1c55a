-- Cancel an unfinished instance, recording the reason; returns {'ok', workflow id} and, when
-- it holds an admission, its limit scope and workflow key.
-- KEYS: instance, history, timers, the partition's outbox, then the status indexes (STATUS_SLOT), then
--       the finished-time index (FINISHED_INDEX), then the extras' keys.
-- ARGV: instance id, reason, now ms, history event, expected status ('' = any), extras
--       (JSON): the listen subscriptions to drop (`subs`: the record read before, its
--       type-set slots) and the parent to tell (through the outbox); {'retry'}
--       when the record moved meanwhile.
-- A policy that allowed the cancel on one status passes it as expected: if the status moved
-- meanwhile, nothing is written and {'changed', status} asks for the policy to decide again.
local cur = redis.call('HMGET', KEYS[1], 'status', 'ikey', 'wf', 'lim', 'lwf')
if not cur[1] then
  return {'missing'}
end
if FINISHED[cur[1]] then
  return {'finished', cur[1]}
end
if ARGV[5] ~= '' and cur[1] ~= ARGV[5] then
  return {'changed', cur[1]}
end
local extras = cjson.decode(ARGV[6])
if (redis.call('HGET', KEYS[1], 'subs') or '') ~= extras.subs.record then
  return {'retry'}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'reason', ARGV[2], 'completed', ARGV[3],
  'updated', ARGV[3], 'step', '')
bump_revision(KEYS[1], 'cancelled')
reindex(cur[2], cur[1], 'cancelled')
redis.call('ZADD', KEYS[FINISHED_INDEX], ARGV[3], cur[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'e', ARGV[4])
resubscribe(KEYS[1], ARGV[1], extras.subs.old, {}, '')
if extras.parent then
  notify_parent(KEYS[4], extras.parent)
end
if cur[4] then
  release_admission(KEYS[4], ARGV[1], cur[4], cur[5])
  return {'ok', cur[3], cur[4], cur[5] or ''}
end
return {'ok', cur[3]}
