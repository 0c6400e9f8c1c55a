-- One rate-limited call, GCRA style: one key holds the theoretical arrival time (TAT) of the
-- next call, so every sidecar sharing this Redis shares the limit, in one atomic round trip.
-- Redis's own clock is the only clock, so sidecars with skewed clocks still agree.
-- KEYS: the limit's key.
-- ARGV: emission interval ms (period / limit), period ms (the burst: `limit` calls at once).
-- Returns '0' when the call may go ahead, else the milliseconds to wait (as a string).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local next_tat = tat + interval
local allow_at = next_tat - period
if allow_at > now then
  return tostring(allow_at - now)
end
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1)
return '0'
