-- Delete one instance finished before the cutoff, with its index entries; returns 1 if purged.
-- KEYS: finished index, then ARGV[3] keys of the instance (its hash first), then every index
--       set that holds its member.
-- ARGV: index member, cutoff ms, how many instance keys follow the finished index.
local finished_at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not finished_at or tonumber(finished_at) > tonumber(ARGV[2]) then
  return 0
end
local n = tonumber(ARGV[3])
local status = redis.call('HGET', KEYS[2], 'status')
if status and not FINISHED[status] then
  -- Finished instances never run again; this one is not finished, so leave it be.
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
for i = 2, n + 1 do
  redis.call('DEL', KEYS[i])
end
for i = n + 2, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
