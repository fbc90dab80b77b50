-- Reserve stock for one order, all items or none, never below zero; idempotent per order.
-- KEYS[1]: stock hash (sku -> units available); KEYS[2]: reservations hash (order id -> doc)
-- KEYS[3]: reserved hash (sku -> units held by reservations)
-- ARGV[1]: order id; ARGV[2]: the reservation document (JSON, stored as is)
-- ARGV[3..]: sku, quantity pairs (each sku once)
-- Returns {'ok'} | {'duplicate', stored doc} | {'unknown', sku} | {'short', sku, available}
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  return {'duplicate', existing}
end
for i = 3, #ARGV, 2 do
  local have = redis.call('HGET', KEYS[1], ARGV[i])
  if not have then
    return {'unknown', ARGV[i]}
  end
  if tonumber(have) < tonumber(ARGV[i + 1]) then
    return {'short', ARGV[i], have}
  end
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1]))
  redis.call('HINCRBY', KEYS[3], ARGV[i], tonumber(ARGV[i + 1]))
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {'ok'}
