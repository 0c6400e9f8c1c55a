-- Extend the leases of the tasks a worker still holds: a claim to itself resets the idle time.
-- KEYS: task stream. ARGV: group, worker, then task entry ids.
-- Returns the ids still held; a task missing from the answer was completed or re-leased.
local held = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending == 1 and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    held[#held + 1] = ARGV[i]
  end
end
return held
