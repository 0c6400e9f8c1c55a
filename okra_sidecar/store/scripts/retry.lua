-- Run a failed instance again from the state given; returns {'ok', workflow id}.
-- KEYS: instance, history, its partition's work stream, then the status indexes
--       (STATUS_SLOT), then the finished-time index (FINISHED_INDEX).
-- ARGV: instance id, now ms, history event, the revision the state was built from, the
--       engine state (JSON), the `$context` (JSON).
-- The state was built from the revision read: {'moved'} when another write came between,
-- and the caller builds it again. The instance takes its place among the unfinished again
-- (the status index, no finished-time member, a turn) but not in the admission limits:
-- their release when it finishes again is idempotent.
local cur = redis.call('HMGET', KEYS[1], 'status', 'ikey', 'wf', 'rev')
if not cur[1] then
  return {'missing'}
end
if cur[1] ~= 'failed' then
  return {'not-failed', cur[1]}
end
if cur[4] ~= ARGV[4] then
  return {'moved'}
end
run_again(KEYS[1], KEYS[2], KEYS[3], KEYS[FINISHED_INDEX], ARGV[1], cur[2], 'failed', ARGV[2],
  ARGV[3], ARGV[5], ARGV[6])
return {'ok', cur[3]}
