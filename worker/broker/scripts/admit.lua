-- Admission: reserve room for ARGV[2] jobs in a queue, atomically.
-- KEYS[1] the admission hash (published by apply_backpressure), KEYS[2] the pending counter,
-- KEYS[3..] the queue's lists (the queue and its priority sub-queues).
-- ARGV[1] limit, ARGV[2] n, ARGV[3] critical (0/1), ARGV[4] pending TTL (ms).
-- Returns {admitted (0/1), depth including pending, loop state, drain rate}.
local depth = 0
for i = 3, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if pending < 0 then pending = 0 end
depth = depth + pending
local state = redis.call('HGET', KEYS[1], 'state') or ''
local rate = redis.call('HGET', KEYS[1], 'drain_rate') or '0'
local n = tonumber(ARGV[2])
if (state == 'shedding' and ARGV[3] == '0') or depth + n > tonumber(ARGV[1]) then
  return {0, depth, state, rate}
end
redis.call('INCRBY', KEYS[2], n)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
return {1, depth, state, rate}
