-- Collect events for a definition's `schedule.on: all`: keep the first event per filter; once
-- every filter has one, hand them all back (in filter order) and start collecting afresh.
-- KEYS: the workflow's collection hash.
-- ARGV: filter index, how many filters, event (JSON).
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3])
local n = tonumber(ARGV[2])
if redis.call('HLEN', KEYS[1]) < n then
  return {}
end
local events = {}
for i = 0, n - 1 do
  events[#events + 1] = redis.call('HGET', KEYS[1], tostring(i))
end
redis.call('DEL', KEYS[1])
return events
