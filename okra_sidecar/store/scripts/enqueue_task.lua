-- Hand a worker effect to its service's task stream and acknowledge the effect in one step,
-- so an executor crash cannot put the same task on the stream twice.
-- KEYS: task stream, effect stream. ARGV: executor group, effect entry id, task fields (JSON).
if redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[3])))
redis.call('XDEL', KEYS[2], ARGV[2])
return 1
