-- Extend the leases of the tasks a worker still holds: a claim to itself resets the idle time.
-- KEYS: task stream. ARGV: group, worker, lease ms, then task entry ids.
-- Returns the ids still held; a task missing from the answer was completed or re-leased, or its
-- lease ran out (idle longer than a lease): an expired lease is not revived, the task is
-- claimed by the next poller.
local held = {}
local lease_ms = tonumber(ARGV[3])
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending == 1 and pending[1][2] == ARGV[2] and pending[1][3] <= lease_ms then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    held[#held + 1] = ARGV[i]
  end
end
return held
