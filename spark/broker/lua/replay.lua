-- Move dead letters back to the request stream unless the backlog is full.
-- KEYS[1]: request stream, KEYS[2]: dead-letter stream.
-- ARGV[1]: max backlog. ARGV[2..]: pairs (dead-letter id, envelope to enqueue).
-- Returns per pair: the new entry id; 0 when the backlog was full (nothing moved);
-- -1 when the dead letter was gone already (replayed or purged by someone else).
local maxlen = tonumber(ARGV[1])
local length = redis.call('XLEN', KEYS[1])
local out = {}
for i = 2, #ARGV, 2 do
  if length >= maxlen then
    out[#out + 1] = 0
  elseif redis.call('XDEL', KEYS[2], ARGV[i]) == 1 then
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
    length = length + 1
  else
    out[#out + 1] = -1
  end
end
return out
