-- physical.lua: applies a physical change to one cell: on_hand becomes an absolute value computed by
-- the durable ledger (only if its version is newer than the cell's, so late replies never roll
-- back), and a shipment naming a reservation moves up to `units` of its commitment to shipped.
-- KEYS: 4 (one SKU group).  ARGV: [1] location, [2] on_hand, [3] version, [4] reservation id or '',
-- [5] units to fulfil, [6] the shipment's event id: a fulfilment is applied once per event id (the
-- cells hash keeps `f:<event id>` → units fulfilled), so a redelivered shipment never takes twice.
-- Returns {on_hand, held, committed, safety, fulfilled_units}; an error COUNTERS_LOST when the cell
-- had earlier positions (version > 1) that Redis does not know.
-- on_hand is written as the caller's decimal string: a Lua number would be stored as "1e+15".
local loc, on_hand, version = ARGV[1], ARGV[2], tonumber(ARGV[3])
local reservation_id, fulfil_units = ARGV[4], tonumber(ARGV[5])
local now = now_ms()
purge_all_groups(now)

local cells = key_of(1, 1)
local current_version = tonumber(redis.call('HGET', cells, 'v:' .. loc) or '-1')
if current_version < 0 and version > 1 then
  -- The ledger had earlier positions of this cell that Redis does not know: its data was lost
  -- (FLUSHALL, a restart without persistence, a foreign instance). Writing on_hand now would
  -- promise units whose holds and commitments are gone, so refuse until it is rebuilt.
  return redis.error_reply('COUNTERS_LOST cell ' .. loc .. ' has no counters; run inventory-mesh rebuild')
end
if version > current_version then
  redis.call('HSET', cells, 'oh:' .. loc, on_hand, 'v:' .. loc, ARGV[3])
end

local fulfilled = 0
local event_id = ARGV[6] or ''
local done = event_id ~= '' and redis.call('HGET', cells, 'f:' .. event_id)
if done then
  fulfilled = tonumber(done)
elseif reservation_id ~= '' and fulfil_units > 0 then
  local member = reservation_id .. '|' .. loc
  local remaining = tonumber(redis.call('HGET', key_of(1, 4), member) or '0')
  fulfilled = math.min(remaining, fulfil_units)
  if fulfilled > 0 then
    redis.call('HINCRBY', cells, 'c:' .. loc, -fulfilled)
    if remaining - fulfilled == 0 then
      redis.call('HDEL', key_of(1, 4), member)
    else
      redis.call('HSET', key_of(1, 4), member, remaining - fulfilled)
    end
  end
  if event_id ~= '' then
    redis.call('HSET', cells, 'f:' .. event_id, fulfilled)
  end
end

local v = redis.call('HMGET', cells, 'oh:' .. loc, 'h:' .. loc, 'c:' .. loc, 's:' .. loc)
return { tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0'), tonumber(v[4] or '0'), fulfilled }
