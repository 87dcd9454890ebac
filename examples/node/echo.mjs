// The DMB echo backend: answers every message and tells everyone about it.
import { createClient } from 'redis';
import { Backend } from './dmb-backend.mjs';

const { REDIS_HOST = 'localhost', REDIS_PORT = '6379', DMB_PREFIX = 'dmb', DMB_SERVICE = 'echo' } = process.env;
const client = createClient({ socket: { host: REDIS_HOST, port: Number(REDIS_PORT) } });
const b = new Backend(client, DMB_SERVICE, { prefix: DMB_PREFIX });
for (const sig of ['SIGTERM', 'SIGINT']) process.once(sig, () => b.stop());

await b.run(async (ev) => {
  if (ev.type !== 'message') return;
  await b.direct(ev.cid, { echo: ev.data }, ev.id);
  await b.broadcast({ from: ev.cid, data: ev.data });
});
await b.leave().catch((err) => b.log.warn('could not leave', { err: err.message }));
await client.disconnect();
