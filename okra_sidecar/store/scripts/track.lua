-- Start counting a limit scope's instances, the first time a limit applies to one of its Runs
-- (a single Redis only, where every partition is on one node: reserve_create.lua asks for it).
-- Every unfinished instance created uncounted in the scope (its scope in 'ulim') is reserved
-- as reserve.lua would have, and takes its scope and workflow key to 'lim' and 'lwf', so that
-- finishing releases it; then the scope's `tracked` flag is set, all in one step, so that no
-- Run falls between the count and the flag.
-- KEYS: the scope's active set, held hash, tracked flag, then the unfinished status indexes
--       of every partition.
-- ARGV: the scope, its limit keys' prefix (RedisKeys.limit_tag), then for each status index
--       in KEYS' order the key prefix of its partition's instances (RedisKeys.tag).
-- The instance and workflow set keys are built here from those prefixes (as RedisKeys.instance
-- and RedisKeys.limit_workflow name them): which instances there are is only known here.
-- Returns how many instances it counted (0 when the scope was counted already).
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local now = redis.call('TIME')
local score = now[1] .. string.format('%06d', now[2])
local counted = 0
for i = 4, #KEYS do
  local tag = ARGV[i - 1]
  for _, member in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    -- An index member is '<created µs>:<instance id>' (records.index_member).
    local id = string.sub(member, string.find(member, ':', 1, true) + 1)
    local k_instance = tag .. ':' .. id
    local scope, workflow_key = unpack(redis.call('HMGET', k_instance, 'ulim', 'ulwf'))
    if scope == ARGV[1] then
      workflow_key = workflow_key or ''
      redis.call('ZADD', KEYS[1], score, id)
      redis.call('ZADD', ARGV[2] .. ':wf:' .. workflow_key, score, id)
      redis.call('HSET', KEYS[2], id, workflow_key)
      redis.call('HSET', k_instance, 'lim', scope, 'lwf', workflow_key)
      redis.call('HDEL', k_instance, 'ulim', 'ulwf')
      counted = counted + 1
    end
  end
end
redis.call('SET', KEYS[3], '1')
return counted
