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
// ARGV[4] key prefix with its colon, ARGV[5] DMB_MAX_SERVICES, ARGV[6] the
// node's id. Every key shares the prefix's hash tag, so on a cluster the
// script runs on the one shard that holds them all.
//
// The nonce key holds the claim, "bkid@node" (claimValue): the bkid
// assigned ("-" until then and for a nack, "!" over the limit) and the
// node that claimed the nonce. Returns {1, bkid} to that node, and
// {0, claim} to the others, which learn the bkid the claim assigned, so
// that on a cluster every node can subscribe to its downlink; the node that
// finds its own claim knows the backend used the nonce again.
// A service that is not registered yet, when DMB_MAX_SERVICES are, is
// refused: {2, ""} to the claimer, which nacks, and the nonce holds "!".
// So a flood of registrations of new services adds at most that many
// services (and one backend each) to what every node refreshes, until
// their retention has passed.
// The counter starts at the Redis clock in microseconds, so that a Redis
// that lost its data (a restart without persistence) does not hand out a
// bkid again unless more registrations came than microseconds passed.
// Numbers are formatted with %d: Lua's tostring would print them in exponent
// form; a Lua number holds them exactly (they stay below 2^53).
var registerScript = redis.NewScript(`
if not redis.call('SET', KEYS[1], '-@' .. ARGV[6], 'NX', 'EX', tonumber(ARGV[3])) then
  return {0, redis.call('GET', KEYS[1]) or '-'}
end
local service = ARGV[1]
local bkid = ARGV[2]
if redis.call('SISMEMBER', KEYS[3], service) == 0 and redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  redis.call('SET', KEYS[1], '!@' .. ARGV[6], 'KEEPTTL')
  return {2, ''}
end
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
redis.call('SET', KEYS[1], bkid .. '@' .. ARGV[6], 'KEEPTTL')
return {1, bkid}
`)

// dropServiceScript takes a service out of the services set when it has no
// registered backend left, in one atomic step with respect to
// registerScript: a backend that registers the service meanwhile keeps it.
//
// KEYS[1] services set, KEYS[2] the service's set of bkids. ARGV[1] the
// service. Returns 1 when it dropped the service.
var dropServiceScript = redis.NewScript(`
if redis.call('SCARD', KEYS[2]) > 0 then
  return 0
end
return redis.call('SREM', KEYS[1], ARGV[1])
`)
