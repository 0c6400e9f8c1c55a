-- Resume a suspended instance with the status it had and a turn; returns {'ok', workflow id}.
-- KEYS: instance, history, its partition's work stream, then the status indexes (STATUS_SLOT).
-- ARGV: instance id, now ms, history event, expected status ('' = any).
-- The work item carries a due time, as a fired timer's does: whatever came due while the
-- instance was suspended (a wait, a backoff, a policy timeout) fires in that turn, and the
-- signals and results kept in the inbox are consumed by it.
local cur = redis.call('HMGET', KEYS[1], 'status', 'ikey', 'wf', 'susp')
if not cur[1] then
  return {'missing'}
end
if ARGV[4] ~= '' and cur[1] ~= ARGV[4] then
  return {'changed', cur[1]}
end
if cur[1] ~= 'suspended' then
  return {'not-suspended', cur[1]}
end
local back = cur[4] or 'running'
redis.call('HSET', KEYS[1], 'status', back, 'updated', ARGV[2])
redis.call('HDEL', KEYS[1], 'susp')
bump_revision(KEYS[1], back)
reindex(cur[2], 'suspended', back)
redis.call('XADD', KEYS[3], '*', 'i', ARGV[1], 'd', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
return {'ok', cur[3]}
