-- Create an instance once: snapshot, first work item, indexes and history in one step.
-- Admission came first, in the scope's own slot (reserve.lua), or, with the score '>', follows
-- through the partition's outbox (admit.lua: the relay meets it before any release of this
-- instance, which a later step writes to the same outbox); the scope and workflow key are kept
-- in the instance ('lim', 'lwf') so that finishing or cancelling releases the same ids.
-- KEYS: instance, history, work stream, voided marker, the partition's outbox, then every index
--       set to join.
-- ARGV: instance id, index member, the reservation's score ('>' on a Cluster when no limit
--       applies: the reservation is handed to the outbox with the create, and the relay makes
--       it in the scope's slot; see docs/architecture.md, "Instance limits"; after a '+' when
--       reserve_create.lua made it in this same step, so that nothing can have voided it;
--       '-' when its scope counts nothing yet: the scope and workflow key go in 'ulim' and
--       'ulwf', where track.lua finds them once a limit comes, and nothing is released),
--       history event, limit scope, workflow key, then the hash's fields and values (plain
--       arguments rather than one JSON list: nothing to encode twice or decode here).
-- A child run joins its parent's index (`idx:parent:`) in its own partition; whether the
-- parent still waits is checked by its starter, before and after (executors/children.py).
-- Returns 1 created, 0 exists (2 exists and finished), -3 the reconciler voided this
-- reservation (it took too long), -4 no reservation (a caller refused by a limit that found
-- the instance, which has gone since: SignalWithStart).
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  return FINISHED[status] and 2 or 0
end
if ARGV[3] == '' then
  return -4
end
local lim, lwf = 'lim', 'lwf'
if ARGV[3] == '>' then
  redis.call('XADD', KEYS[5], '*', 'k', 'reserve', 'i', ARGV[1], 's', ARGV[5], 'w', ARGV[6])
elseif ARGV[3] == '-' then
  lim, lwf = 'ulim', 'ulwf'
elseif string.byte(ARGV[3]) ~= 43 and redis.call('GET', KEYS[4]) == ARGV[3] then -- not '+'
  return -3
end
redis.call('HSET', KEYS[1], lim, ARGV[5], lwf, ARGV[6], unpack(ARGV, 7))
redis.call('XADD', KEYS[3], '*', 'i', ARGV[1])
for i = 6, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[2])
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[4])
return 1
