-- snapshot.lua: after purging expired holds, returns each SKU group's cells, live holds and open
-- commitments, flattened: per group {n_cell_fields, field, value, ..., n_holds, member, units,
-- deadline, ..., n_commitments, member, units, ...}.
-- KEYS: 4 per SKU group.  ARGV: none.
local now = now_ms()
purge_all_groups(now)
local out = { now }
for group = 1, #KEYS / 4 do
  local fields = redis.call('HGETALL', key_of(group, 1))
  table.insert(out, #fields / 2)
  for _, x in ipairs(fields) do table.insert(out, x) end
  local holds = redis.call('HGETALL', key_of(group, 2))
  table.insert(out, #holds / 2)
  for i = 1, #holds, 2 do
    table.insert(out, holds[i])
    table.insert(out, holds[i + 1])
    table.insert(out, redis.call('ZSCORE', key_of(group, 3), holds[i]) or '0')
  end
  local commitments = redis.call('HGETALL', key_of(group, 4))
  table.insert(out, #commitments / 2)
  for _, x in ipairs(commitments) do table.insert(out, x) end
end
return out
