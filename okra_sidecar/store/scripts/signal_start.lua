-- SignalWithStart: create the instance if it does not exist yet (create.lua), then deliver the
-- signal to it (signal.lua), in one step. load_script prepends both scripts as the functions
-- create(KEYS, ARGV) and signal(KEYS, ARGV), so each keeps its own KEYS and ARGV layout.
-- KEYS: inbox, delivered signal ids, then create.lua's KEYS (instance, history, work stream,
--       voided marker, outbox, index sets).
-- ARGV: n, create.lua's n ARGV, then signal.lua's ARGV (instance id, signal id, event, now
--       ms, expected status).
-- Returns {created, signal outcome...}: created as create.lua returns it (1, 0, 2, -3, -4); the
-- signal is not delivered when the create was refused.
local n = tonumber(ARGV[1])
local created = create({unpack(KEYS, 3)}, {unpack(ARGV, 2, n + 1)})
if created < 0 then
  return {created}
end
local outcome = signal({KEYS[3], KEYS[1], KEYS[2], KEYS[5]}, {unpack(ARGV, n + 2)})
table.insert(outcome, 1, created)
return outcome
