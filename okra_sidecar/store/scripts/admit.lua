-- Record admissions that creates handed to their partitions' outboxes (a Run to which no
-- limit applied, on a Cluster: create.lua's score '>'), a batch of one scope at once, so that
-- a limit set later counts the instances already running.
-- KEYS: the scope's active set, the held hash, then the workflow set of each id, in order.
-- ARGV: the workflow key of each id, then the ids, in KEYS' order.
-- An id already held takes the new score too: the reconciler releases a reservation only by
-- the score it read, so one it voided before this create (the instance did not exist yet)
-- stays held for the instance that now exists. Returns how many ids were not held before.
local now = redis.call('TIME')
local score = now[1] .. string.format('%06d', now[2])
local n = #KEYS - 2
local added = 0
for i = 1, n do
  local id = ARGV[n + i]
  added = added + redis.call('ZADD', KEYS[1], score, id)
  redis.call('ZADD', KEYS[i + 2], score, id)
  redis.call('HSET', KEYS[2], id, ARGV[i])
end
return added
