-- release.lua: returns what a reservation still has on these cells: its live hold units (mode
-- 'hold') or its unshipped committed units (mode 'commitment'), never both, so a release that saw a
-- held record cannot take away a commitment a racing confirm just made. Releasing twice returns 0
-- the second time (a hold ends exactly once).
-- KEYS: 4 per SKU group.  ARGV: [1] reservation id, [2] mode, [3] cell count, then per cell: group,
-- location.
-- Returns {hold_units_released, committed_units_released, now, units released per cell...}.
local reservation_id, mode, cell_count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
purge_all_groups(now)

local held_released, committed_released, per_cell = 0, 0, {}
for i = 0, cell_count - 1 do
  local group, loc = tonumber(ARGV[4 + i * 2]), ARGV[5 + i * 2]
  local member = reservation_id .. '|' .. loc
  local cell_units = 0
  local hold_units = mode == 'hold' and redis.call('HGET', key_of(group, 2), member)
  if hold_units then
    redis.call('HINCRBY', key_of(group, 1), 'h:' .. loc, -tonumber(hold_units))
    redis.call('HDEL', key_of(group, 2), member)
    redis.call('ZREM', key_of(group, 3), member)
    held_released = held_released + tonumber(hold_units)
    cell_units = cell_units + tonumber(hold_units)
  end
  local committed_units = mode == 'commitment' and redis.call('HGET', key_of(group, 4), member)
  if committed_units then
    redis.call('HINCRBY', key_of(group, 1), 'c:' .. loc, -tonumber(committed_units))
    redis.call('HDEL', key_of(group, 4), member)
    committed_released = committed_released + tonumber(committed_units)
    cell_units = cell_units + tonumber(committed_units)
  end
  table.insert(per_cell, cell_units)
end
local out = { held_released, committed_released, now }
for _, units in ipairs(per_cell) do table.insert(out, units) end
return out
