-- Renew or release a GraphState transaction lock, only if this token still holds it.
-- KEYS[1]: the namespace's transaction lock.
-- ARGV[1]: the transaction's token. ARGV[2]: new lease in ms, or 0 to release.
-- Returns 1 when done, 0 when the lock is gone or held by another transaction.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
