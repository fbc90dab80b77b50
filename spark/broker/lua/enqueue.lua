-- Append request envelopes to a service's stream unless its backlog is full.
-- KEYS[1]: the request stream. KEYS[2]: the backlog's byte count.
-- ARGV[1]: max backlog (entries). ARGV[2]: max backlog bytes (0: no limit).
-- ARGV[3..]: envelopes.
-- Returns one entry id per envelope, or 0 for each envelope refused as overloaded.
-- Checking and appending in one script keeps the bounds exact under concurrent producers,
-- and refusing (rather than trimming) never drops a request Redis already accepted.
-- Workers subtract what they finish from the byte count; an empty stream resets it, so a
-- count that drifted (a stream deleted under it, an operator's purge) heals by itself.
local maxlen = tonumber(ARGV[1])
local maxbytes = tonumber(ARGV[2])
local length = redis.call('XLEN', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if length == 0 or used < 0 then
  used = 0
end
local added = 0
local ids = {}
for i = 3, #ARGV do
  local size = string.len(ARGV[i])
  if length < maxlen and (maxbytes == 0 or used + size <= maxbytes or length == 0) then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
    length = length + 1
    used = used + size
    added = added + 1
  else
    ids[#ids + 1] = 0
  end
end
if added > 0 then
  redis.call('SET', KEYS[2], used)
end
return ids
