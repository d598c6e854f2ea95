-- reserve.lua: holds every line of a reservation, or none (invariants 1 and 6).
-- KEYS: 4 per SKU group (cells, hq, hx, cq).
-- ARGV: [1] reservation id, [2] ttl ms, [3] line count, then per line: group, location, units.
-- Lines naming the same cell are summed before any check; every line is checked before any write.
-- Returns {1, deadline_ms} held; {2, deadline_ms} this id already holds or committed these cells;
-- {0, 0, group, loc, requested, atp, ...} one quadruple per short cell, nothing written.
local reservation_id, ttl_ms, line_count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
purge_all_groups(now)

local demand, cell_order = {}, {}
for i = 0, line_count - 1 do
  local group, loc, units = tonumber(ARGV[4 + i * 3]), ARGV[5 + i * 3], tonumber(ARGV[6 + i * 3])
  local cell = group .. '|' .. loc
  if demand[cell] == nil then
    demand[cell] = { group = group, loc = loc, units = 0 }
    table.insert(cell_order, cell)
  end
  demand[cell].units = demand[cell].units + units
end

for _, cell in ipairs(cell_order) do
  local d = demand[cell]
  local member = reservation_id .. '|' .. d.loc
  if redis.call('HEXISTS', key_of(d.group, 2), member) == 1 then
    return { 2, tonumber(redis.call('ZSCORE', key_of(d.group, 3), member) or '0') }
  end
  if redis.call('HEXISTS', key_of(d.group, 4), member) == 1 then
    return { 2, 0 }
  end
end

local short = { 0, 0 }
for _, cell in ipairs(cell_order) do
  local d = demand[cell]
  local atp = atp_of(d.group, d.loc)
  if atp < d.units then
    table.insert(short, d.group)
    table.insert(short, d.loc)
    table.insert(short, d.units)
    table.insert(short, atp)
  end
end
if #short > 2 then
  return short
end

local deadline = now + ttl_ms
for _, cell in ipairs(cell_order) do
  local d = demand[cell]
  local member = reservation_id .. '|' .. d.loc
  redis.call('HINCRBY', key_of(d.group, 1), 'h:' .. d.loc, d.units)
  redis.call('HSET', key_of(d.group, 2), member, d.units)
  redis.call('ZADD', key_of(d.group, 3), deadline, member)
end
return { 1, deadline }
