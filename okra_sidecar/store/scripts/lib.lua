-- Helpers shared by the scripts that hand something to an instance (prepended by load_script).

-- Put an event in an unfinished instance's inbox once per dedup id, and ask for a turn.
-- Returns 'ok', 'duplicate', 'finished' or 'missing'.
local function deliver(k_instance, k_inbox, k_delivered, k_work, instance_id, dedup, event)
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
  redis.call('XADD', k_inbox, '*', 'e', event)
  redis.call('XADD', k_work, '*', 'i', instance_id)
  return 'ok'
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

-- A finished child hands its outcome to the parent that awaits it (`parent` from the extras).
local function notify_parent(parent)
  return deliver(KEYS[parent.k[1]], KEYS[parent.k[2]], KEYS[parent.k[3]], KEYS[parent.k[4]],
    parent.id, parent.dedup, parent.event)
end
