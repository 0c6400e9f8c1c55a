-- Admit and create an instance in one step, where the limit scope's keys and the instance's
-- share a node (a single Redis, not a Cluster): reserve.lua, then create.lua with the score it
-- gave, which load_script prepends as the functions reserve(KEYS, ARGV) and create(KEYS, ARGV).
-- One round trip instead of two; nothing can void the reservation in between.
-- A scope that has never had a limit counts nothing (its `tracked` flag is unset): a Run no
-- limit applies to is created uncounted (score '-': it keeps its scope in 'ulim', 'ulwf'), and
-- one a limit applies to is answered {'untracked'}, for the caller to count the scope's
-- unfinished instances and set the flag (track.lua, one step) and call again.
-- KEYS: reserve.lua's KEYS (active set, workflow set, held hash), the scope's tracked flag,
--       then create.lua's KEYS.
-- ARGV: reserve.lua's ARGV (instance id, max active, max per workflow, workflow key), then
--       create.lua's ARGV, its reservation score left '' (filled in here).
-- Returns reserve.lua's reply ({'active'} or {'workflow'} when refused: nothing created),
-- {'untracked'}, or {outcome ('new', 'held' or 'uncounted'), score ('' when uncounted),
-- created as create.lua returns it}.
local create_argv = {unpack(ARGV, 5)}
if redis.call('EXISTS', KEYS[4]) == 0 then
  if tonumber(ARGV[2]) > 0 or tonumber(ARGV[3]) > 0 then
    return {'untracked'}
  end
  create_argv[3] = '-'
  return {'uncounted', '', create({unpack(KEYS, 5)}, create_argv)}
end
local admission = reserve({KEYS[1], KEYS[2], KEYS[3]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
if admission[1] ~= 'new' and admission[1] ~= 'held' then
  return admission
end
create_argv[3] = admission[2]
if admission[1] == 'new' then
  -- Made in this step: nothing can have voided it, so create.lua need not look ('+').
  create_argv[3] = '+' .. admission[2]
end
admission[3] = create({unpack(KEYS, 5)}, create_argv)
return admission
