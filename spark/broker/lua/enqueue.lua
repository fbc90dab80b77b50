-- Append request envelopes to a service's stream unless its backlog is full.
-- KEYS[1]: the request stream. ARGV[1]: max backlog (entries). ARGV[2..]: envelopes.
-- Returns one entry id per envelope, or 0 for each envelope refused as overloaded.
-- Checking and appending in one script keeps the bound exact under concurrent producers,
-- and refusing (rather than trimming) never drops a request Redis already accepted.
local maxlen = tonumber(ARGV[1])
local length = redis.call('XLEN', KEYS[1])
local ids = {}
for i = 2, #ARGV do
  if length < maxlen then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
    length = length + 1
  else
    ids[#ids + 1] = 0
  end
end
return ids
