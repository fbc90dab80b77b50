-- Fill a service's seed data once (or again with reset), atomically: nobody sees the
-- marker without the data.
-- KEYS[1]: the seed marker; KEYS[2..]: hashes to (re)create
-- ARGV[1]: seed version; ARGV[2]: "1" to reset even when already seeded
-- ARGV[3..]: for each hash of KEYS[2..], in order: a field count n, then n field/value pairs
if ARGV[2] ~= '1' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return 0
end
local a = 3
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('HSET', KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
