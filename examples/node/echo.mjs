// The DMB echo backend: answers every message and tells everyone about it.
//
// Redis is chosen as DMB chooses it: REDIS_CLUSTER_ADDRS (a Redis Cluster),
// else REDIS_SENTINEL_ADDRS and REDIS_SENTINEL_MASTER (the master the
// sentinels name), else REDIS_HOST and REDIS_PORT.
import { createClient, createCluster, createSentinel } from 'redis';
import { Backend } from '@dmb/backend';

const { REDIS_HOST = 'localhost', REDIS_PORT = '6379', DMB_PREFIX = 'dmb', DMB_SERVICE = 'echo' } = process.env;

// addrs reads a comma-separated list of host:port.
const addrs = (list = '') =>
  list.split(',').filter((a) => a.trim()).map((a) => {
    const i = a.lastIndexOf(':');
    return { host: a.slice(0, i).trim(), port: Number(a.slice(i + 1)) };
  });

function redisClient(env) {
  if (env.REDIS_CLUSTER_ADDRS) {
    return createCluster({ rootNodes: addrs(env.REDIS_CLUSTER_ADDRS).map((socket) => ({ socket })) });
  }
  if (env.REDIS_SENTINEL_ADDRS) {
    return createSentinel({
      name: env.REDIS_SENTINEL_MASTER,
      sentinelRootNodes: addrs(env.REDIS_SENTINEL_ADDRS),
      sentinelClientOptions: env.REDIS_SENTINEL_PASSWORD ? { password: env.REDIS_SENTINEL_PASSWORD } : undefined,
    });
  }
  return createClient({ socket: { host: REDIS_HOST, port: Number(REDIS_PORT) } });
}

const client = redisClient(process.env);
const b = new Backend(client, DMB_SERVICE, { prefix: DMB_PREFIX });
for (const sig of ['SIGTERM', 'SIGINT']) process.once(sig, () => b.stop());

await b.run(async (ev) => {
  if (ev.type !== 'message') return;
  await b.direct(ev.cid, { echo: ev.data }, ev.id);
  await b.broadcast({ from: ev.cid, data: ev.data });
});
await b.leave().catch((err) => b.log.warn('could not leave', { err: err.message }));
await client.destroy();
