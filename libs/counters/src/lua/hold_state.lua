-- hold_state.lua: after purging expired holds, tells what a reservation has on these cells.
-- KEYS: 4 per SKU group.  ARGV: [1] reservation id, [2] cell count, then per cell: group, location.
-- Returns {live_cells, committed_cells, earliest_deadline_or_0, now}.
local reservation_id, cell_count = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
purge_all_groups(now)

local live, committed, earliest = 0, 0, 0
for i = 0, cell_count - 1 do
  local group, loc = tonumber(ARGV[3 + i * 2]), ARGV[4 + i * 2]
  local member = reservation_id .. '|' .. loc
  local deadline = redis.call('ZSCORE', key_of(group, 3), member)
  if deadline then
    live = live + 1
    if earliest == 0 or tonumber(deadline) < earliest then earliest = tonumber(deadline) end
  end
  if redis.call('HEXISTS', key_of(group, 4), member) == 1 then committed = committed + 1 end
end
return { live, committed, earliest, now }
