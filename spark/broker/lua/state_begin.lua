-- Start a GraphState transaction: take the namespace's lease lock and read the whole hash
-- in one round trip.
-- KEYS[1]: the state hash. KEYS[2]: the namespace's transaction lock.
-- ARGV[1]: this transaction's random token. ARGV[2]: lease in ms.
-- Returns nil when another transaction holds the lock, else HGETALL of the hash.
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('HGETALL', KEYS[1])
