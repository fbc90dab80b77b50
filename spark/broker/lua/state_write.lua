-- Write fields of a GraphState hash unless a transaction holds its namespace.
-- KEYS[1]: the state hash. KEYS[2]: the namespace's transaction lock.
-- ARGV[1]: TTL of the hash in ms, refreshed on every write (0: none).
-- ARGV[2]: "set" (HSET) or "setnx" (HSETNX: only fields that are absent, for initial state).
-- ARGV[3]: n, the number of fields to write; ARGV[4 .. 3+2n]: field, value pairs;
-- ARGV[4+2n ..]: fields to delete.
-- Returns -1 when a transaction holds the lock (nothing written), else the number of
-- deleted fields that existed. Checking the lock here is what keeps a plain write from
-- landing between a transaction's read and its commit.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local n = tonumber(ARGV[3])
local cmd = 'HSET'
if ARGV[2] == 'setnx' then
  cmd = 'HSETNX'
end
for i = 4, 3 + 2 * n, 2 do
  redis.call(cmd, KEYS[1], ARGV[i], ARGV[i + 1])
end
local deleted = 0
for i = 4 + 2 * n, #ARGV do
  deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return deleted
