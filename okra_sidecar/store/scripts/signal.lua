-- Deliver a signal to an unfinished instance once per signal id, and ask for a turn.
-- A signal id already delivered answers 'duplicate' first, even once the instance finished.
-- KEYS: instance, inbox, delivered signal ids, work stream.
-- ARGV: instance id, signal id, event (JSON), now ms, expected status ('' = any), expected
-- workflow id ('' = any).
-- As in cancel.lua, a status that moved since the policy checked it writes nothing. The
-- expected workflow is the one whose payload schema the caller checked, remembered from an
-- earlier call: an instance running another answers 'workflow' (see InstanceWorkflows).
local status, workflow = unpack(redis.call('HMGET', KEYS[1], 'status', 'wf'))
if not status then
  return {'missing'}
end
-- A repeat is a success whatever happened since: the ids stay until retention purges the
-- instance, so a client retrying a lost reply after the signal finished it gets 'duplicate'.
if FINISHED[status] then
  if redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then
    return {'duplicate'}
  end
  return {'finished', status}
end
-- Taking the id says in one command whether it was delivered before; a refusal below gives it
-- back, so that nothing is left written.
if redis.call('SADD', KEYS[3], ARGV[2]) == 0 then
  return {'duplicate'}
end
local refused = nil
local expected_workflow = ARGV[6] or ''  -- signal_start.lua passes none
if expected_workflow ~= '' and workflow ~= expected_workflow then
  refused = {'workflow'}
elseif ARGV[5] ~= '' and status ~= ARGV[5] then
  refused = {'changed', status}
end
if refused then
  redis.call('SREM', KEYS[3], ARGV[2])
  return refused
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
redis.call('XADD', KEYS[4], '*', 'i', ARGV[1])
return {'ok'}
