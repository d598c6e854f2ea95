-- extend.lua: moves the deadline of a live hold on every given cell to min(now + ttl, cap), never
-- earlier than it is; held units never change (B17). Nothing changes unless every cell is live.
-- KEYS: 4 per SKU group.  ARGV: [1] reservation id, [2] ttl ms, [3] cap (absolute deadline ms),
-- [4] cell count, then per cell: group, location.
-- Returns {1, new_deadline, now} extended (the earliest new deadline); {0, 0, now} a hold is missing.
local reservation_id, ttl_ms, cap, cell_count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
purge_all_groups(now)

for i = 0, cell_count - 1 do
  local group, loc = tonumber(ARGV[5 + i * 2]), ARGV[6 + i * 2]
  if redis.call('HEXISTS', key_of(group, 2), reservation_id .. '|' .. loc) == 0 then
    return { 0, 0, now }
  end
end

local wanted, earliest = math.min(now + ttl_ms, cap), 0
for i = 0, cell_count - 1 do
  local group, loc = tonumber(ARGV[5 + i * 2]), ARGV[6 + i * 2]
  local member = reservation_id .. '|' .. loc
  local deadline = math.max(tonumber(redis.call('ZSCORE', key_of(group, 3), member)), wanted)
  redis.call('ZADD', key_of(group, 3), 'XX', deadline, member)
  if earliest == 0 or deadline < earliest then earliest = deadline end
end
return { 1, earliest, now }
