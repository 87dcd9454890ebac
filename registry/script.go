package registry

import "github.com/redis/go-redis/v9"

// registerScript claims a bk_connect's nonce and, when this node wins the
// claim, assigns the bkid, all in one atomic step: whatever the number of
// nodes, exactly one of them answers, and the bkid's record is in Redis
// before the answer is published, so every node can resolve the bkid of the
// first message the backend sends after its ack.
//
// KEYS[1] nonce key, KEYS[2] bkid counter, KEYS[3] services set.
// ARGV[1] service, ARGV[2] requested bkid or "", ARGV[3] nonce TTL seconds,
// ARGV[4] key prefix with its colon. Every key shares the prefix's hash tag,
// so on a cluster the script runs on the one shard that holds them all.
//
// Returns {1, bkid} to the node that claimed the nonce, and {0, bkid} to
// the others, which learn the bkid the claim assigned (the nonce key holds
// it), so that on a cluster every node can subscribe to its downlink.
// The counter starts at the Redis clock in microseconds, so that a Redis
// that lost its data (a restart without persistence) does not hand out a
// bkid again unless more registrations came than microseconds passed.
// Numbers are formatted with %d: Lua's tostring would print them in exponent
// form; a Lua number holds them exactly (they stay below 2^53).
var registerScript = redis.NewScript(`
if not redis.call('SET', KEYS[1], '-', 'NX', 'EX', tonumber(ARGV[3])) then
  return {0, redis.call('GET', KEYS[1]) or '-'}
end
local service = ARGV[1]
local bkid = ARGV[2]
if bkid ~= '' then
  if redis.call('HGET', ARGV[4] .. 'backend:' .. bkid, 'service') ~= service then
    bkid = ''
  end
end
if bkid == '' then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])))
  end
  bkid = string.format('%d', redis.call('INCR', KEYS[2]))
end
redis.call('HSET', ARGV[4] .. 'backend:' .. bkid, 'service', service)
-- A bkid dropped after its retention expires later; coming back keeps it.
redis.call('PERSIST', ARGV[4] .. 'backend:' .. bkid)
redis.call('SADD', ARGV[4] .. 'service:' .. service, bkid)
redis.call('SADD', KEYS[3], service)
redis.call('SET', KEYS[1], bkid, 'KEEPTTL')
return {1, bkid}
`)
