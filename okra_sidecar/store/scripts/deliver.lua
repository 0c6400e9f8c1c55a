-- Deliver an effect result or a routed event to an instance, and acknowledge its source entry
-- in the same step, so a crash can neither lose the outcome nor deliver it without the ack.
-- KEYS: instance, inbox, delivered ids, work stream, then optionally the source stream.
-- ARGV: instance id, dedup id, event (JSON), then optionally the source group and entry id.
local outcome = deliver(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
if KEYS[5] then
  redis.call('XACK', KEYS[5], ARGV[4], ARGV[5])
  redis.call('XDEL', KEYS[5], ARGV[5])
end
return outcome
