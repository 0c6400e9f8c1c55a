-- Helpers shared by the scripts that hand something to an instance (prepended by load_script).

-- Take dedup id `dedup` for an unfinished instance: nil once taken, else why not
-- ('duplicate', 'finished' or 'missing').
local function take_once(k_instance, k_delivered, dedup)
  local status = redis.call('HGET', k_instance, 'status')
  if not status then
    return 'missing'
  end
  if FINISHED[status] then
    return 'finished'
  end
  if redis.call('SADD', k_delivered, dedup) == 0 then
    return 'duplicate'
  end
  return nil
end

-- Put an event in an unfinished instance's inbox once per dedup id, and ask for a turn.
-- Returns 'ok', 'duplicate', 'finished' or 'missing'.
local function deliver(k_instance, k_inbox, k_delivered, k_work, instance_id, dedup, event)
  local refused = take_once(k_instance, k_delivered, dedup)
  if refused then
    return refused
  end
  redis.call('XADD', k_inbox, '*', 'e', event)
  redis.call('XADD', k_work, '*', 'i', instance_id)
  return 'ok'
end

-- Announce a committed change of an instance on its channel (RedisKeys.changes: the instance
-- key plus ':changes', in the instance's slot) as '<revision> <status>', for AwaitInstance
-- and WatchInstance. PUBLISH, not SPUBLISH: the embedded redis-server is 6.2.
local function announce(k_instance, revision, status)
  redis.call('PUBLISH', k_instance .. ':changes', revision .. ' ' .. status)
end

-- A changed instance takes the next revision and announces it with its new status.
local function bump_revision(k_instance, status)
  announce(k_instance, redis.call('HINCRBY', k_instance, 'rev', 1), status)
end

-- Move an instance (its index member `ikey`) from the `old` status index to the `new` one.
local function reindex(ikey, old, new)
  redis.call('ZREM', KEYS[STATUS_SLOT[old]], ikey)
  redis.call('ZADD', KEYS[STATUS_SLOT[new]], 0, ikey)
end

-- Retry and Reset: the instance runs again from the engine state and `$context` given (JSON),
-- among the unfinished (status index, no finished-time member, a turn) with its history event.
local function run_again(k_instance, k_history, k_work, k_finished, instance_id, ikey, old,
                         now_ms, event, state, context)
  redis.call('HSET', k_instance, 'status', 'running', 'state', state, 'ctx', context,
    'updated', now_ms, 'step', '')
  redis.call('HDEL', k_instance, 'error', 'output', 'completed')
  bump_revision(k_instance, 'running')
  reindex(ikey, old, 'running')
  redis.call('ZREM', k_finished, ikey)
  redis.call('XADD', k_work, '*', 'i', instance_id)
  redis.call('XADD', k_history, '*', 'e', event)
end

-- Move an instance's listen subscriptions from the `old` type sets to the `new` ones and
-- record them (JSON) in its hash, or drop them when `record` is ''.
local function resubscribe(k_instance, instance_id, old, new, record)
  for _, slot in ipairs(old) do
    redis.call('SREM', KEYS[slot], instance_id)
  end
  for _, slot in ipairs(new) do
    redis.call('SADD', KEYS[slot], instance_id)
  end
  if record == '' then
    redis.call('HDEL', k_instance, 'subs')
  else
    redis.call('HSET', k_instance, 'subs', record)
  end
end

-- A finished child hands its outcome to the parent awaiting it (`parent` from the extras)
-- through its partition's outbox, since the parent may live in another slot; the relay
-- delivers it (once: `parent.dedup`).
local function notify_parent(k_outbox, parent)
  redis.call('XADD', k_outbox, '*', 'k', 'deliver', 'i', parent.id, 'd', parent.dedup, 'e',
    parent.event)
end

-- A finished instance gives its admission back in its limit scope, another slot: through the
-- partition's outbox; the relay applies it (release.lua, idempotent). On a single Redis the
-- caller may pass the scope's keys instead (`here`: the scope and workflow key it expects and
-- the KEYS slot of its active set, held hash and workflow set): released in this same step.
local function release_admission(k_outbox, instance_id, scope, workflow_key, here)
  if here and here.scope == scope and here.wf == (workflow_key or '') then
    redis.call('ZREM', KEYS[here.slot + 2], instance_id)
    redis.call('HDEL', KEYS[here.slot + 1], instance_id)
    redis.call('ZREM', KEYS[here.slot], instance_id)
    return
  end
  redis.call('XADD', k_outbox, '*', 'k', 'release', 'i', instance_id, 's', scope, 'w',
    workflow_key or '')
end
