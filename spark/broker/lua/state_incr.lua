-- Atomically add to an integer field of a GraphState hash (HINCRBY) unless a transaction
-- holds the namespace. Values are JSON, and a JSON integer is what HINCRBY reads and writes.
-- KEYS[1]: the state hash. KEYS[2]: the namespace's transaction lock.
-- ARGV[1]: field. ARGV[2]: amount. ARGV[3]: TTL of the hash in ms (0: none).
-- Returns {0} when locked, {1, new value as a string} (a string, because Lua numbers are
-- doubles and would round counters above 2^53), or {2, error} when the field holds
-- something other than a signed 64-bit integer or the sum would overflow.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0}
end
local r = redis.pcall('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if type(r) == 'table' and r.err then
  return {2, r.err}
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {1, redis.call('HGET', KEYS[1], ARGV[1])}
