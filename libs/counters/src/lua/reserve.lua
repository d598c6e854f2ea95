-- reserve.lua: holds the lines of a reservation (invariants 1 and 6).
-- KEYS: 4 per SKU group (cells, hq, hx, cq).
-- ARGV: [1] reservation id, [2] ttl ms, [3] policy ('all' or 'partial'), [4] line count, then per
-- line: group, location, units.
-- Lines naming the same cell are summed before any check; every line is checked before any write.
-- Policy 'all': every cell is held in full, or nothing is written. Policy 'partial': each cell
-- holds what its ATP covers (possibly 0); nothing is written if that is 0 everywhere.
-- Returns {1, deadline_ms, cell_count, (group, loc, held_units)*} held;
-- {2, deadline_ms} this id already holds or committed these cells (nothing changed);
-- {0, 0, (group, loc, requested, atp)*} one quadruple per short cell, nothing written.
local reservation_id, ttl_ms, policy, line_count = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now = now_ms()
purge_all_groups(now)

local demand, cell_order = {}, {}
for i = 0, line_count - 1 do
  local group, loc, units = tonumber(ARGV[5 + i * 3]), ARGV[6 + i * 3], tonumber(ARGV[7 + i * 3])
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

local short, total = { 0, 0 }, 0
for _, cell in ipairs(cell_order) do
  local d = demand[cell]
  local atp = atp_of(d.group, d.loc)
  if atp < d.units then
    table.insert(short, d.group)
    table.insert(short, d.loc)
    table.insert(short, d.units)
    table.insert(short, atp)
  end
  d.take = d.units
  if atp < d.units then d.take = math.max(atp, 0) end
  total = total + d.take
end
if (policy ~= 'partial' and #short > 2) or total == 0 then
  return short
end

local deadline = now + ttl_ms
local out = { 1, deadline, #cell_order }
for _, cell in ipairs(cell_order) do
  local d = demand[cell]
  if d.take > 0 then
    local member = reservation_id .. '|' .. d.loc
    redis.call('HINCRBY', key_of(d.group, 1), 'h:' .. d.loc, d.take)
    redis.call('HSET', key_of(d.group, 2), member, d.take)
    redis.call('ZADD', key_of(d.group, 3), deadline, member)
  end
  table.insert(out, d.group)
  table.insert(out, d.loc)
  table.insert(out, d.take)
end
return out
