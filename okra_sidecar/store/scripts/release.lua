-- Give an admitted id's place back in its scope's sets.
-- KEYS: the scope's active set, the workflow's set, the held hash.
-- ARGV: instance id, the reservation's score ('' = whichever), which the reconciler passes
--       so that it never frees a reservation made again since it looked.
-- Returns 1 released, 0 not held (already released: releases are idempotent).
if ARGV[2] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
