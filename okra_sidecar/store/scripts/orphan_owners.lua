-- The consumers of a group worth a look across its streams, in one call instead of an XINFO
-- CONSUMERS per stream parsed by the caller (on a Cluster, one call per stream: one slot each).
-- KEYS: the streams (one per partition). ARGV: the group, '1' to look at every stream or '0'
-- to skip the empty ones (acknowledged entries are deleted: an empty stream has no entry left
-- to take over), the idle time (ms) past which a consumer with nothing pending is reported.
-- Returns a flat list of partition (from 0), consumer name, pending count and idle ms for each
-- consumer with entries pending, or idle past ARGV[3] (store/liveness.py forgets those).
local out = {}
local forget = tonumber(ARGV[3])
for p = 1, #KEYS do
  if ARGV[2] == '1' or redis.call('XLEN', KEYS[p]) > 0 then
    local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[p], ARGV[1])
    -- An error (no group on that stream yet) means nothing was read there.
    if not consumers.err then
      for _, consumer in ipairs(consumers) do
        local info = {}
        for i = 1, #consumer, 2 do
          info[consumer[i]] = consumer[i + 1]
        end
        if info.pending > 0 or info.idle >= forget then
          out[#out + 1] = p - 1
          out[#out + 1] = info.name
          out[#out + 1] = info.pending
          out[#out + 1] = info.idle
        end
      end
    end
  end
end
return out
