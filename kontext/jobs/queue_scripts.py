"""The Lua scripts of the Redis run queue (``kontext.jobs.redis_queue``): each check-and-write is one script, so
no other client's command lands between its steps, and a process that dies mid-way leaves all or nothing.

Keys and arguments, in the order the queue passes them:
- PUT: KEYS queued, band stream, deferred, deferred entries, arrivals; ARGV job, priority, steps, delay ms, band.
- RENEW, CLOSE: KEYS stream; ARGV group, consumer, entry id.
- DEFER: KEYS stream, then PUT's; ARGV group, consumer, entry id, then PUT's. 0: not this consumer's entry
  (nothing done); 1: closed, the job queued already; 2: closed and queued.
- PROMOTE: KEYS deferred, deferred entries, arrivals, the streams by band; ARGV how many at most. Moves the due
  entries into their streams; returns the ms until the next is due, or -1.
"""

_NOW_MS = """
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
"""
_ENQUEUE = _NOW_MS + """
local function enqueue(queued, stream, deferred, entries, arrivals, job, priority, steps, delay_ms, band)
  if redis.call('SADD', queued, job) == 0 then return 0 end
  local arrival = redis.call('INCR', arrivals)
  if tonumber(delay_ms) > 0 then
    redis.call('ZADD', deferred, string.format('%.0f', now_ms() + tonumber(delay_ms)), job)
    redis.call('HSET', entries, job, band .. ' ' .. priority .. ' ' .. steps .. ' ' .. arrival)
  else
    redis.call('XADD', stream, '*', 'job', job, 'priority', priority, 'steps', steps, 'arrival', arrival)
  end
  return 1
end
"""
PUT = _ENQUEUE + """
return enqueue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""
_OWNED = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
"""
RENEW = _OWNED + """
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""
_CLOSE_OWNED = _OWNED + """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
"""
CLOSE = _CLOSE_OWNED + """
return 1
"""
DEFER = _ENQUEUE + _CLOSE_OWNED + """
return 1 + enqueue(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
"""
PROMOTE = _NOW_MS + """
local now = now_ms()
for _, job in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  local entry = redis.call('HGET', KEYS[2], job)
  redis.call('ZREM', KEYS[1], job)
  redis.call('HDEL', KEYS[2], job)
  if entry then
    local band, priority, steps = string.match(entry, '^(%d+) (%S+) (%S+)')
    local arrival = redis.call('INCR', KEYS[3])
    redis.call('XADD', KEYS[4 + tonumber(band)], '*', 'job', job, 'priority', priority, 'steps', steps,
               'arrival', arrival)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return -1 end
return math.max(0, tonumber(first[2]) - now)
"""
