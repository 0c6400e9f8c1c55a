-- Create an instance once: snapshot, first work item, indexes and history in one step.
-- KEYS: instance, history, work stream, active counter, then every index set to join.
-- ARGV: instance id, index member, max active (0 = no limit), flat field list (JSON), history event.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local max_active = tonumber(ARGV[3])
if max_active > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= max_active then
  return -1
end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[4])))
redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], '*', 'i', ARGV[1])
for i = 5, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[2])
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[5])
return 1
