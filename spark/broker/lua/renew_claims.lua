-- Extend the leases of idempotency markers still held by the requests that set them.
-- KEYS[i]: an idempotency key. ARGV[1]: lease in ms. ARGV[i + 1]: the marker KEYS[i] holds
-- while its request runs. A key now holding something else (the stored reply, another
-- owner's marker, nothing) is left alone. Returns how many leases were extended.
local renewed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    renewed = renewed + 1
  end
end
return renewed
