-- A worker's batch in one round trip: stored results, replies, then the entries finished.
-- KEYS[1]: the request stream. KEYS[2]: the backlog's byte count.
-- KEYS[3 .. 2+R]: reply streams, one per reply. KEYS[3+R .. 2+R+S]: idempotency keys.
-- ARGV[1]: consumer group. ARGV[2]: a reply's field. ARGV[3]: reply TTL (s).
-- ARGV[4]: R. ARGV[5]: S. ARGV[6]: E. ARGV[7 ..]: S pairs (TTL in s, payload; TTL 0
-- releases the key), R reply payloads, E triples (entry id, envelope bytes, index of its
-- reply in 1..R; 0 when it has none).
-- Returns R flags: 1 where the reply was written.
-- An entry is acknowledged and deleted only when it has no reply or its reply was written
-- (a refused XADD - out of memory, a wrong type - leaves it pending, to be retried or
-- reclaimed). Only entries this call acknowledged leave the byte count, so a retry of a
-- batch whose answer was lost does not subtract twice.
-- Not for a cluster: reply streams live in their clients' slots (the worker uses two
-- pipelines there, replies first).
local group = ARGV[1]
local field = ARGV[2]
local ttl = tonumber(ARGV[3])
local nreplies = tonumber(ARGV[4])
local nstored = tonumber(ARGV[5])
local nentries = tonumber(ARGV[6])
local arg = 7
-- Stored results first, as a repeat of a keyed request may follow its reply at once.
for i = 1, nstored do
  local key = KEYS[2 + nreplies + i]
  local seconds = tonumber(ARGV[arg])
  if seconds > 0 then
    redis.pcall('SET', key, ARGV[arg + 1], 'EX', seconds)
  else
    redis.pcall('DEL', key)
  end
  arg = arg + 2
end
local written = {}
for i = 1, nreplies do
  local key = KEYS[2 + i]
  local ok = redis.pcall('XADD', key, '*', field, ARGV[arg])
  arg = arg + 1
  if type(ok) == 'table' and ok.err then
    written[i] = 0
  else
    written[i] = 1
    redis.pcall('EXPIRE', key, ttl)
  end
end
local freed = 0
for i = 1, nentries do
  local reply = tonumber(ARGV[arg + 2])
  if reply == 0 or written[reply] == 1 then
    -- A stream reset under us (no group) has nothing left to acknowledge.
    local id = ARGV[arg]
    if redis.pcall('XACK', KEYS[1], group, id) == 1 then
      freed = freed + tonumber(ARGV[arg + 1])
    end
    redis.pcall('XDEL', KEYS[1], id)
  end
  arg = arg + 3
end
if freed > 0 then
  redis.pcall('DECRBY', KEYS[2], freed)
end
return written
