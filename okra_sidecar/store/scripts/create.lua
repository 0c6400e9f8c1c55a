-- Create an instance once: snapshot, first work item, indexes and history in one step.
-- Admission is atomic: the active and per-workflow counters are checked and counted here, so
-- concurrent Runs can never overshoot a limit. The per-workflow counter's name is kept in the
-- instance ('wfc') so that finishing or cancelling frees the same slot.
-- KEYS: instance, history, work stream, active counter, then every index set to join.
-- ARGV: instance id, index member, max active (0 = no limit), history event, per-workflow
--       counter key, max per workflow (0 = no limit), then the hash's fields and values
--       (plain arguments rather than one JSON list: nothing to encode twice or decode here).
-- A child run joins its parent's index (`idx:parent:`) in its own partition; whether the
-- parent still waits is checked by its starter, before and after (executors/children.py).
-- Returns 1 created, 0 exists, -1 active limit reached, -2 per-workflow limit reached.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local max_active = tonumber(ARGV[3])
if max_active > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= max_active then
  return -1
end
local max_workflow = tonumber(ARGV[6])
if max_workflow > 0 and tonumber(redis.call('GET', ARGV[5]) or '0') >= max_workflow then
  return -2
end
redis.call('HSET', KEYS[1], 'wfc', ARGV[5], unpack(ARGV, 7))
redis.call('INCR', KEYS[4])
redis.call('INCR', ARGV[5])
redis.call('XADD', KEYS[3], '*', 'i', ARGV[1])
for i = 5, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[2])
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[4])
return 1
