-- Delete one instance finished before the cutoff, with its index entries; returns 1 if purged.
-- KEYS: finished index, then ARGV[3] keys of the instance (its hash first), then every index
--       set that holds its member, then (with ARGV[4]) the key naming the bulk operation.
-- ARGV: index member, cutoff ms, how many instance keys follow the finished index, and for a
--       bulk DELETE the operation's id and how long (ms) its record of the delete is kept.
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
local last = #KEYS
if ARGV[4] then
  last = last - 1
end
for i = n + 2, last do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[4] then
  redis.call('SET', KEYS[#KEYS], ARGV[4], 'PX', ARGV[5])
end
return 1
