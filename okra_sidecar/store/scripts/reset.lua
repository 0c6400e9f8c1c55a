-- Take an ended or waiting instance back to a top-level task with the state given; returns
-- {'ok', workflow id}.
-- KEYS: instance, history, its partition's work stream, then the status indexes
--       (STATUS_SLOT), then the finished-time index (FINISHED_INDEX).
-- ARGV: instance id, now ms, history event, the revision the state was built from, the
--       engine state (JSON), the `$context` (JSON).
-- The state was built from the revision read: {'moved'} when another write came between (a
-- turn, a signal's Cancel, a Suspend: each bumps the revision), and the caller builds it
-- again; a turn loaded before this step cannot commit after it, for the same reason. As for
-- Retry, a finished instance is not counted in the admission limits again.
local cur = redis.call('HMGET', KEYS[1], 'status', 'ikey', 'wf', 'rev')
if not cur[1] then
  return {'missing'}
end
local status = cur[1]
if not (FINISHED[status] or status == 'waiting') then
  return {'busy', status}
end
if cur[4] ~= ARGV[4] then
  return {'moved'}
end
redis.call('HDEL', KEYS[1], 'reason')
run_again(KEYS[1], KEYS[2], KEYS[3], KEYS[FINISHED_INDEX], ARGV[1], cur[2], status, ARGV[2],
  ARGV[3], ARGV[5], ARGV[6])
return {'ok', cur[3]}
