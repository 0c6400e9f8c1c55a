-- Send an instance's turns to the slow lane from now on; nothing if it no longer exists
-- (a purged instance must not come back as a hash holding only this flag).
-- KEYS: the instance hash. Returns its workflow id, or false when it is gone.
local wf = redis.call('HGET', KEYS[1], 'wf')
if wf then
  redis.call('HSET', KEYS[1], 'slow', '1')
end
return wf
