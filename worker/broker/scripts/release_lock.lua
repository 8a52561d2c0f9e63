-- Release a lock only if we still own it: it may have expired and been taken by another run.
-- KEYS[1] the lock, ARGV[1] our token. Returns 1 if released, else 0.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
