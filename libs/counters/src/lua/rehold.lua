-- rehold.lua: undoes part of a multi-slot confirm (Redis Cluster): turns this reservation's
-- commitment on each given cell back into the hold it was, with its old deadline, so a confirm that
-- failed in another slot leaves the reservation exactly as it found it.
-- KEYS: 4 per SKU group.  ARGV: [1] reservation id, [2] cell count, then per cell: group, location,
-- deadline.
-- Returns {cells_restored}.
local reservation_id, cell_count = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
purge_all_groups(now)
local restored = 0
for i = 0, cell_count - 1 do
  local group, loc, deadline = tonumber(ARGV[3 + i * 3]), ARGV[4 + i * 3], tonumber(ARGV[5 + i * 3])
  local member = reservation_id .. '|' .. loc
  local units = redis.call('HGET', key_of(group, 4), member)
  if units then
    units = tonumber(units)
    redis.call('HDEL', key_of(group, 4), member)
    redis.call('HINCRBY', key_of(group, 1), 'c:' .. loc, -units)
    if deadline > now then
      redis.call('HINCRBY', key_of(group, 1), 'h:' .. loc, units)
      redis.call('HSET', key_of(group, 2), member, units)
      redis.call('ZADD', key_of(group, 3), deadline, member)
    end
    restored = restored + 1
  end
end
return { restored }
