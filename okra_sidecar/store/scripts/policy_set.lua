-- Replace the shared policy set and tell every sidecar: a new version, then a message.
-- KEYS: the policies hash.
-- ARGV: document (canonical JSON), source, digest, file digest ('' keeps the stored one),
--       now ms, the change channel.
-- Returns the new version.
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'document', ARGV[1], 'source', ARGV[2], 'digest', ARGV[3],
  'updated', ARGV[5])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'fileDigest', ARGV[4])
end
redis.call('PUBLISH', ARGV[6], version)
return version
