-- restore.lua: merges one SKU's durable state into Redis after data loss (inventory-mesh rebuild).
-- It only adds what is missing, so it is idempotent and safe beside live traffic: a position is
-- written only if newer than Redis's, a hold or commitment only if Redis has neither for that
-- reservation and cell, and a hold only if its deadline is still ahead of the server clock.
-- KEYS: 4 (one SKU group).
-- ARGV: [1] cell count, then per cell: loc, on_hand, version, safety;
--       then hold count, per hold: rid, loc, units, deadline;
--       then commitment count, per commitment: rid, loc, units.
-- Returns {cells_written, holds_added, commitments_added}.
local now = now_ms()
purge_all_groups(now)
local cells, hq, hx, cq = key_of(1, 1), key_of(1, 2), key_of(1, 3), key_of(1, 4)

local at = 1
local written, holds, commitments = 0, 0, 0
local cell_count = tonumber(ARGV[at]); at = at + 1
for _ = 1, cell_count do
  local loc, on_hand, version, safety = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3]
  at = at + 4
  local current = tonumber(redis.call('HGET', cells, 'v:' .. loc) or '-1')
  if version > current then
    redis.call('HSET', cells, 'oh:' .. loc, on_hand, 'v:' .. loc, ARGV[at - 2], 's:' .. loc, safety)
    written = written + 1
  end
end
local hold_count = tonumber(ARGV[at]); at = at + 1
for _ = 1, hold_count do
  local rid, loc, units, deadline = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  at = at + 4
  local member = rid .. '|' .. loc
  if deadline > now and redis.call('HEXISTS', hq, member) == 0 and redis.call('HEXISTS', cq, member) == 0 then
    redis.call('HINCRBY', cells, 'h:' .. loc, units)
    redis.call('HSET', hq, member, units)
    redis.call('ZADD', hx, deadline, member)
    holds = holds + 1
  end
end
local commitment_count = tonumber(ARGV[at]); at = at + 1
for _ = 1, commitment_count do
  local rid, loc, units = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 3
  local member = rid .. '|' .. loc
  if units > 0 and redis.call('HEXISTS', cq, member) == 0 and redis.call('HEXISTS', hq, member) == 0 then
    redis.call('HINCRBY', cells, 'c:' .. loc, units)
    redis.call('HSET', cq, member, units)
    commitments = commitments + 1
  end
end
return { written, holds, commitments }
