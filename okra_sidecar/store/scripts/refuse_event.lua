-- Record in an instance's history that a routed event was not delivered to it: its data broke
-- the payload schema the instance's listen task declares for the event's type. Once per event,
-- under the same de-duplication id a delivery takes (so a re-routed copy is not delivered
-- either), and nothing else changes: the instance goes on waiting.
-- KEYS: instance, history, delivered ids.
-- ARGV: dedup id, history event (JSON).
local refused = take_once(KEYS[1], KEYS[3], ARGV[1])
if refused then
  return refused
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
return 'ok'
