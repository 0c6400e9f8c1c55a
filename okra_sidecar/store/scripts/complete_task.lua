-- A worker's outcome for a task: deliver it to the instance and remove the task, once, and
-- only from the worker that holds the task (the one its lease was signed for).
-- KEYS: task stream, instance, inbox, delivered ids, work stream.
-- ARGV: group, task entry id, instance id, dedup id, event (JSON), worker.
-- Returns 'gone' when the task was completed already, 'moved' when its lease ran out and
-- another worker holds it now.
if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
  return 'gone'
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[6] then
  return 'moved'
end
local outcome = deliver(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return outcome
