-- set_safety.lua: sets the safety units of one cell.
-- KEYS: 4 (one SKU group).  ARGV: [1] location, [2] safety units.
-- Returns {on_hand, held, committed, safety}.
-- safety is written as the caller's decimal string: a Lua number would be stored as "1e+15".
local loc, safety = ARGV[1], ARGV[2]
purge_all_groups(now_ms())
redis.call('HSET', key_of(1, 1), 's:' .. loc, safety)
local v = redis.call('HMGET', key_of(1, 1), 'oh:' .. loc, 'h:' .. loc, 'c:' .. loc, 's:' .. loc)
return { tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0'), tonumber(v[4] or '0') }
