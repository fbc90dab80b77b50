-- Commit a GraphState transaction: apply its writes and release the lock, only if the lock
-- is still this transaction's (fencing: a transaction whose lease expired writes nothing).
-- KEYS[1]: the state hash. KEYS[2]: the namespace's transaction lock.
-- ARGV[1]: the transaction's token. ARGV[2]: TTL of the hash in ms (0: none).
-- ARGV[3]: n, the number of fields to write; ARGV[4 .. 3+2n]: field, value pairs;
-- ARGV[4+2n ..]: fields to delete.
-- Returns 1 when committed, 0 when the lock is no longer held by this token.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[3])
for i = 4, 3 + 2 * n, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = 4 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local ttl = tonumber(ARGV[2])
if ttl > 0 and (n > 0 or #ARGV > 3) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('DEL', KEYS[2])
return 1
