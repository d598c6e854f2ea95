-- prelude.lua: helpers shared by every counter script (prepended at load time).
-- Key group of one SKU (all share the hash tag {sku}, so one slot):
--   cells  HASH  oh:<loc> on_hand, h:<loc> held, c:<loc> committed, s:<loc> safety, v:<loc> on_hand version
--   hq     HASH  <rid>|<loc> -> units of a live hold
--   hx     ZSET  <rid>|<loc> scored by the hold's absolute deadline (ms, Redis server clock)
--   cq     HASH  <rid>|<loc> -> units still committed (confirmed, not shipped, not cancelled)
-- A hold is live iff deadline > now. Expired holds are purged at the start of every script that
-- touches their SKU, so an expired hold is never counted and never confirmable (invariant 3).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function key_of(group, slot)
  return KEYS[(group - 1) * 4 + slot]
end

local function purge_expired(group, now)
  local cells, hq, hx = key_of(group, 1), key_of(group, 2), key_of(group, 3)
  local expired = redis.call('ZRANGEBYSCORE', hx, '-inf', now)
  for _, member in ipairs(expired) do
    local units = tonumber(redis.call('HGET', hq, member) or '0')
    local loc = string.match(member, '|(.*)$')
    redis.call('HINCRBY', cells, 'h:' .. loc, -units)
    redis.call('HDEL', hq, member)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', hx, '-inf', now)
  end
end

local function purge_all_groups(now)
  for group = 1, #KEYS / 4 do
    purge_expired(group, now)
  end
end

local function atp_of(group, loc)
  local v = redis.call('HMGET', key_of(group, 1), 'oh:' .. loc, 'h:' .. loc, 'c:' .. loc, 's:' .. loc)
  return tonumber(v[1] or '0') - tonumber(v[2] or '0') - tonumber(v[3] or '0') - tonumber(v[4] or '0')
end
