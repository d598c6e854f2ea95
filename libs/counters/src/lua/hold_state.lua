-- hold_state.lua: after purging expired holds, tells what a reservation has on these cells.
-- KEYS: 4 per SKU group.  ARGV: [1] reservation id, [2] cell count, then per cell: group, location.
-- Returns {now, (held_units, deadline_or_0, committed_units)*} one triple per cell, in order.
local reservation_id, cell_count = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
purge_all_groups(now)

local out = { now }
for i = 0, cell_count - 1 do
  local group, loc = tonumber(ARGV[3 + i * 2]), ARGV[4 + i * 2]
  local member = reservation_id .. '|' .. loc
  table.insert(out, tonumber(redis.call('HGET', key_of(group, 2), member) or '0'))
  table.insert(out, tonumber(redis.call('ZSCORE', key_of(group, 3), member) or '0'))
  table.insert(out, tonumber(redis.call('HGET', key_of(group, 4), member) or '0'))
end
return out
