-- Admission: reserve room for ARGV[2] jobs in a queue, atomically.
-- KEYS[1] the admission hash (published by apply_backpressure), KEYS[2] the queue's reservations
-- (sorted set: member "<id>:<n>" -> expiry in ms, Redis clock), KEYS[3] the queue's held counter
-- (jobs waiting `held` in the ledger, not in the broker), KEYS[4..] the queue's lists (the queue
-- and its priority sub-queues; none on RabbitMQ).
-- ARGV[1] limit, ARGV[2] n, ARGV[3] critical (0/1), ARGV[4] reservation TTL (ms), ARGV[5] the
-- reservation's member ("<id>:<n>"), ARGV[6] the broker's depth read by the caller (RabbitMQ; 0
-- when the lists are in KEYS).
-- Returns {admitted (0/1), depth including held jobs and live reservations, loop state, drain rate}.
--
-- Each reservation expires on its own: a process killed before its release leaks room only
-- until its member's score passes, however many admits follow (one key TTL refreshed by every
-- admit never expired under steady traffic). A release is a ZREM of its own member, so a late
-- release is a no-op and the count can never go below zero.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local pending = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  pending = pending + tonumber(string.match(member, ':(%d+)$') or '0')
end
-- held jobs count like messages: a dispatched queue's backlog waits in the ledger, and without
-- them its depth would stay at the dispatch window however far the backlog grew
-- (it may drift below zero between two of apply_backpressure's resets: counted as none)
local depth = pending + math.max(0, tonumber(redis.call('GET', KEYS[3]) or '0'))
depth = depth + tonumber(ARGV[6] or '0')
for i = 4, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
local state = redis.call('HGET', KEYS[1], 'state') or ''
local rate = redis.call('HGET', KEYS[1], 'drain_rate') or '0'
local n = tonumber(ARGV[2])
if (state == 'shedding' and ARGV[3] == '0') or depth + n > tonumber(ARGV[1]) then
  return {0, depth, state, rate}
end
local ttl = tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
-- The key itself goes once idle; live members keep their own expiry whatever this TTL is.
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, depth, state, rate}
