-- Admit and create an instance in one step, where the limit scope's keys and the instance's
-- share a node (a single Redis, not a Cluster): reserve.lua, then create.lua with the score it
-- gave, which load_script prepends as the functions reserve(KEYS, ARGV) and create(KEYS, ARGV).
-- One round trip instead of two; nothing can void the reservation in between.
-- KEYS: reserve.lua's KEYS (active set, workflow set, held hash), then create.lua's KEYS.
-- ARGV: reserve.lua's ARGV (instance id, max active, max per workflow, workflow key), then
--       create.lua's ARGV, its reservation score left '' (filled in here).
-- Returns reserve.lua's reply ({'active'} or {'workflow'} when refused: nothing created), or
-- {'new' or 'held', score, created} with created as create.lua returns it.
local admission = reserve({KEYS[1], KEYS[2], KEYS[3]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
if admission[1] ~= 'new' and admission[1] ~= 'held' then
  return admission
end
local create_argv = {unpack(ARGV, 5)}
create_argv[3] = admission[2]
if admission[1] == 'new' then
  -- Made in this step: nothing can have voided it, so create.lua need not look ('+').
  create_argv[3] = '+' .. admission[2]
end
admission[3] = create({unpack(KEYS, 4)}, create_argv)
return admission
