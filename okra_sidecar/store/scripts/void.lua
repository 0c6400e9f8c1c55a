-- The reconciler gives up a reservation whose instance was never created: unless it exists
-- now, mark the reservation void in the instance's slot, so that a create still on its way
-- with that reservation is refused rather than running uncounted.
-- KEYS: instance, voided marker. ARGV: the reservation's score, marker lifetime (ms).
-- Returns 1 voided, 0 the instance exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
