-- Give admitted ids' places back in their scope's sets (the relay hands over a batch at once).
-- KEYS: the scope's active set, the held hash, then the workflow set of each id, in order.
-- ARGV: for each id in KEYS' order, the instance id and the reservation's score ('' =
--       whichever), which the reconciler passes so that it never frees a reservation made
--       again since it looked.
-- Returns how many were released; one not held is skipped (releases are idempotent).
local released = 0
for i = 3, #KEYS do
  local id, score = ARGV[2 * i - 5], ARGV[2 * i - 4]
  if score == '' or redis.call('ZSCORE', KEYS[1], id) == score then
    redis.call('ZREM', KEYS[i], id)
    redis.call('HDEL', KEYS[2], id)
    released = released + redis.call('ZREM', KEYS[1], id)
  end
end
return released
