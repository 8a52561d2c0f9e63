-- Forget a known queue that is idle and empty, atomically: an arrival between the check and the
-- removal would otherwise be lost from the set (its ZADD lands in the same pipeline as its LPUSH).
-- KEYS[1]: the known-queues sorted set; KEYS[2..n]: the queue's lists (every priority), then its
-- per-queue keys to delete with it (arrival and drain counters, rates).
-- ARGV[1]: the queue; ARGV[2]: cutoff score (last arrival before it is idle); ARGV[3]: how many
-- of KEYS[2..] are the queue's lists.
-- Returns 1 if the queue was forgotten, else 0.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) >= tonumber(ARGV[2]) then
  return 0
end
local lists = tonumber(ARGV[3])
for i = 2, lists + 1 do
  if redis.call('LLEN', KEYS[i]) > 0 then
    return 0
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
for i = lists + 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
return 1
