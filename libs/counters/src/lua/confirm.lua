-- confirm.lua: turns every cell of a live hold into a commitment, or none.
-- KEYS: 4 per SKU group.  ARGV: [1] reservation id, [2] cell count, then per cell: group, location.
-- Returns {1, now, deadline per cell...} confirmed (the deadlines the holds had); {2, now} already
-- confirmed (every cell committed, no hold left);
-- {0, now} the hold is missing (expired, released or lost): nothing changed.
local reservation_id, cell_count = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
purge_all_groups(now)

local live, committed = 0, 0
for i = 0, cell_count - 1 do
  local group, loc = tonumber(ARGV[3 + i * 2]), ARGV[4 + i * 2]
  local member = reservation_id .. '|' .. loc
  if redis.call('HEXISTS', key_of(group, 2), member) == 1 then live = live + 1 end
  if redis.call('HEXISTS', key_of(group, 4), member) == 1 then committed = committed + 1 end
end
if live < cell_count then
  if live == 0 and committed == cell_count then return { 2, now } end
  return { 0, now }
end

local out = { 1, now }
for i = 0, cell_count - 1 do
  local group, loc = tonumber(ARGV[3 + i * 2]), ARGV[4 + i * 2]
  local member = reservation_id .. '|' .. loc
  table.insert(out, tonumber(redis.call('ZSCORE', key_of(group, 3), member)))
  local units = tonumber(redis.call('HGET', key_of(group, 2), member))
  redis.call('HINCRBY', key_of(group, 1), 'h:' .. loc, -units)
  redis.call('HINCRBY', key_of(group, 1), 'c:' .. loc, units)
  redis.call('HSET', key_of(group, 4), member, units)
  redis.call('HDEL', key_of(group, 2), member)
  redis.call('ZREM', key_of(group, 3), member)
end
return out
