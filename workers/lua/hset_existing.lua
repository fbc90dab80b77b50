-- Update fields of a hash only if it exists; the whole hash after the update, or nil.
-- KEYS[1]: the hash; ARGV: field/value pairs
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return redis.call('HGETALL', KEYS[1])
