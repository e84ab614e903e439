package redis

import goredis "github.com/redis/go-redis/v9"

// A user's binding is one hash, changed only by these scripts (atomic in
// Redis): field b is the backend, g the generation (from one counter, so a
// binding made again never reuses a generation), and one field per
// instance incarnation, "l:<incarnation>:<instance>", its live sessions of
// the user. A count counts only while the instance's registration key holds
// that incarnation: when an instance stops refreshing it, its counts stop
// holding the user after lease_ttl, and the scripts delete them as they
// pass. A binding with no live count expires after the pool's linger.

// liveLua is shared by the scripts. live reads the binding and drops the
// counts of dead incarnations; settle gives a binding left with no live
// session its linger (a binding with live sessions has no expiry), and
// returns false for b and g if that deleted it (linger 0). ARGV[1] is the
// registration key prefix, ARGV[2] the linger in milliseconds.
const liveLua = `
local function live(k)
  local f = redis.call('HGETALL', k)
  local b, g, n = false, false, 0
  for i = 1, #f, 2 do
    local name = f[i]
    if name == 'b' then b = f[i+1]
    elseif name == 'g' then g = f[i+1]
    else
      local inc, inst = string.match(name, '^l:([^:]+):(.*)$')
      local c = tonumber(f[i+1]) or 0
      if inc and c > 0 and redis.call('GET', ARGV[1] .. inst) == inc then
        n = n + c
      else
        redis.call('HDEL', k, name)
      end
    end
  end
  return b, g, n
end
local function expire(k)
  if tonumber(ARGV[2]) > 0 then
    redis.call('PEXPIRE', k, ARGV[2])
    return true
  end
  redis.call('DEL', k)
  return false
end
local function settle(k, b, g, n)
  if b and n == 0 and redis.call('PTTL', k) == -1 and not expire(k) then
    return false, false
  end
  return b, g
end
`

// acquireScript is the get-or-set. KEYS: binding, generation counter.
// ARGV[3] is the generation the caller's decision was based on ("-": none
// yet, just read; "0": no binding), ARGV[4] "1" if it saw live sessions,
// ARGV[5] the decision, ARGV[6] this instance's count field. When the
// binding is not what the decision saw, nothing changes and the caller
// decides again on what is returned: {applied, backend, gen, live}; an
// applied empty decision returns backend "" (nothing placed).
var acquireScript = goredis.NewScript(liveLua + `
local k = KEYS[1]
local b, g, n = live(k)
local seen = '0'
if n > 0 then seen = '1' end
if ARGV[3] == '-' or (g or '0') ~= ARGV[3] or seen ~= ARGV[4] then
  b, g = settle(k, b, g, n)
  return {0, b or '', g or '0', n}
end
local to = ARGV[5]
if to == '' then
  b, g = settle(k, b, g, n)
  return {1, '', g or '0', n}
end
if b ~= to then
  if g then
    redis.call('DEL', k)
  end
  g = tostring(redis.call('INCR', KEYS[2]))
  redis.call('HSET', k, 'b', to, 'g', g, ARGV[6], 1)
  return {1, to, g, 1}
end
redis.call('HINCRBY', k, ARGV[6], 1)
if n == 0 then
  redis.call('PERSIST', k)
end
return {1, to, g, n + 1}
`)

// releaseScript ends one session. KEYS: binding. ARGV[3] the generation of
// the session's token (a release for another generation is ignored),
// ARGV[4] the count field. It reads the binding once: the last session's
// release (the common one) is three commands.
var releaseScript = goredis.NewScript(liveLua + `
local k = KEYS[1]
local f = redis.call('HGETALL', k)
local b, g, mine = false, false, 0
for i = 1, #f, 2 do
  if f[i] == 'b' then b = f[i+1]
  elseif f[i] == 'g' then g = f[i+1]
  elseif f[i] == ARGV[4] then mine = tonumber(f[i+1]) or 0
  end
end
if g ~= ARGV[3] then return 0 end
if mine > 1 then
  redis.call('HINCRBY', k, ARGV[4], -1)
  return 1
end
redis.call('HDEL', k, ARGV[4])
local n = 0
for i = 1, #f, 2 do
  local name = f[i]
  if name ~= 'b' and name ~= 'g' and name ~= ARGV[4] then
    local inc, inst = string.match(name, '^l:([^:]+):(.*)$')
    local c = tonumber(f[i+1]) or 0
    if inc and c > 0 and redis.call('GET', ARGV[1] .. inst) == inc then
      n = n + c
    else
      redis.call('HDEL', k, name)
    end
  end
end
if b and n == 0 then
  expire(k)
end
return 1
`)

// lookupScript reads a binding: {backend, gen, live}.
var lookupScript = goredis.NewScript(liveLua + `
local b, g, n = live(KEYS[1])
b, g = settle(KEYS[1], b, g, n)
return {b or '', g or '0', n}
`)

// moveScript re-points a binding. KEYS: binding, counter. ARGV[3] the
// backend. The binding has no live session and lingers (at least 1 ms).
var moveScript = goredis.NewScript(`
local g = tostring(redis.call('INCR', KEYS[2]))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'b', ARGV[3], 'g', g)
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), 1))
return g
`)

// syncScript publishes this instance's own count after the store came
// back: KEYS binding, counter; ARGV[3] backend, ARGV[4] count field,
// ARGV[5] the count. If other instances hold live sessions on another
// backend, nothing changes and {0, backend, gen} tells the caller to end
// its sessions of the user; else {1, backend, gen}.
var syncScript = goredis.NewScript(liveLua + `
local k = KEYS[1]
local b, g, n = live(k)
local mine = tonumber(redis.call('HGET', k, ARGV[4]) or '0')
if b and b ~= ARGV[3] and n - mine > 0 then
  return {0, b, g}
end
if b ~= ARGV[3] then
  g = tostring(redis.call('INCR', KEYS[2]))
  redis.call('DEL', k)
  redis.call('HSET', k, 'b', ARGV[3], 'g', g)
end
if tonumber(ARGV[5]) > 0 then
  redis.call('HSET', k, ARGV[4], ARGV[5])
  redis.call('PERSIST', k)
else
  redis.call('HDEL', k, ARGV[4])
end
b, g, n = live(k)
b, g = settle(k, b, g, n)
return {1, b or '', g or '0'}
`)

// refreshScript extends this instance's registration if it still holds
// this incarnation: 1, else 0 (it expired: the counts under it are gone).
// KEYS: registration. ARGV[1] incarnation, ARGV[2] lease_ttl in ms.
var refreshScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)
