-- Give an order's reserved stock back, once. The reservation stays, marked released, so a
-- late repeat of the reservation cannot take the stock again.
-- KEYS[1]: stock hash; KEYS[2]: reservations hash; KEYS[3]: reserved hash; ARGV[1]: order id
-- Returns {'released', doc} | {'already', doc} | {'none'}
local doc = redis.call('HGET', KEYS[2], ARGV[1])
if not doc then
  return {'none'}
end
local reservation = cjson.decode(doc)
if reservation['released'] then
  return {'already', doc}
end
for _, item in ipairs(reservation['items']) do
  redis.call('HINCRBY', KEYS[1], item['sku'], tonumber(item['quantity']))
  redis.call('HINCRBY', KEYS[3], item['sku'], -tonumber(item['quantity']))
end
reservation['released'] = true
doc = cjson.encode(reservation)
redis.call('HSET', KEYS[2], ARGV[1], doc)
return {'released', doc}
