-- Suspend an unfinished instance: no turn runs it until resume.lua; returns {'ok', workflow id}.
-- KEYS: instance, history, its partition's work stream (unused: resume.lua's KEYS, so one
--       caller serves both), then the status indexes (STATUS_SLOT).
-- ARGV: instance id, now ms, history event, expected status ('' = any).
-- The revision moves, so a turn loaded before the suspend cannot commit over it: it loads
-- again, finds the instance suspended and leaves its work (signals, results) in the inbox.
local cur = redis.call('HMGET', KEYS[1], 'status', 'ikey', 'wf')
if not cur[1] then
  return {'missing'}
end
if FINISHED[cur[1]] then
  return {'finished', cur[1]}
end
if ARGV[4] ~= '' and cur[1] ~= ARGV[4] then
  return {'changed', cur[1]}
end
if cur[1] == 'suspended' then
  return {'suspended'}
end
redis.call('HSET', KEYS[1], 'status', 'suspended', 'susp', cur[1], 'updated', ARGV[2])
bump_revision(KEYS[1], 'suspended')
reindex(cur[2], cur[1], 'suspended')
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
return {'ok', cur[3]}
