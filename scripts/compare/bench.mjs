// DMB, a centrifuge server and a Socket.IO server side by side: the same
// clients (ws), the same machine, one server at a time (run.sh runs this). For each: idle memory per connection (server RSS growth / N) and a
// broadcast of M messages at R/s to N clients: deliveries, server CPU,
// deliveries per server CPU-second, latency p50/p99.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { createClient } from 'redis';
import { Backend } from '../../clients/node/index.mjs';

const [which, N = 1000, M = 200, R = 20] = process.argv.slice(2).map((v, i) => (i ? Number(v) : v));
const payload = 'x'.repeat(60);
const BIN = process.env.BIN; // where run.sh built dmb and centrifuge-server
const TICK = 100; // clock ticks per second

const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const cpu = (pid) => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) / TICK; };

async function waitPort(url) {
  for (let i = 0; i < 200; i++) { try { await fetch(url); return; } catch { await sleep(50); } }
  throw new Error('server did not start: ' + url);
}

const procs = [];
const start = (cmd, args, env = {}) => { const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit'] }); procs.push(p); return p; };
process.on('exit', () => procs.forEach((p) => p.kill('SIGKILL')));

let server, extraPids = [], url, onFrame, hello, trigger;
const lat = []; let delivered = 0;
const note = (t) => { delivered++; lat.push(Date.now() - t); };

if (which === 'dmb') {
  const redis = start('redis-server', ['--port', '18401', '--save', '', '--appendonly', 'no']);
  extraPids.push(redis.pid);
  await sleep(300);
  server = start(`${BIN}/dmb`, [], { REDIS_HOST: '127.0.0.1', REDIS_PORT: '18401', DMB_PORT: '18400', DMB_BIND: '127.0.0.1', DMB_ADMIN_ADDR: '', DMB_LOG_LEVEL: 'warn' });
  await waitPort('http://127.0.0.1:18400/healthz');
  const rc = createClient({ socket: { host: '127.0.0.1', port: 18401 } });
  const b = new Backend(rc, 'bench', { logger: { info() {}, warn() {}, error: console.error } });
  b.run(() => {});
  while (!b.bkid) await sleep(20);
  await sleep(200);
  url = 'ws://127.0.0.1:18400/ws/bench';
  hello = (ws, done) => { ws.once('message', (d) => { if (String(d).includes('dmb:connected')) done(); }); };
  onFrame = (d) => { const s = String(d); if (s.includes('dmb:broadcast')) note(JSON.parse(s).data.t); };
  trigger = async () => { for (let i = 0; i < M; i++) { await b.broadcast({ i, t: Date.now(), p: payload }); await sleep(1000 / R); } };
} else if (which === 'cf') {
  server = start(`${BIN}/centrifuge-server`, []);
  await waitPort('http://127.0.0.1:18200/broadcast?n=0&rate=1');
  url = 'ws://127.0.0.1:18200/connection/websocket';
  hello = (ws, done) => { ws.send(JSON.stringify({ id: 1, connect: {} })); ws.once('message', () => done()); };
  onFrame = (d) => { for (const line of String(d).split('\n')) { if (line === '{}') continue; const f = JSON.parse(line); if (f.push?.pub) note(f.push.pub.data.t); } };
  trigger = () => fetch(`http://127.0.0.1:18200/broadcast?n=${M}&rate=${R}&payload=${payload}`);
} else {
  server = start('node', [new URL('./socketio-server.mjs', import.meta.url).pathname]);
  await waitPort('http://127.0.0.1:18300/none');
  url = 'ws://127.0.0.1:18300/socket.io/?EIO=4&transport=websocket';
  hello = (ws, done) => { ws.on('message', function first(d) { const s = String(d); if (s[0] === '0') ws.send('40'); if (s.startsWith('40')) { ws.off('message', first); done(); } }); };
  onFrame = (d, ws) => { const s = String(d); if (s === '2') return ws.send('3'); if (s.startsWith('42')) note(JSON.parse(s.slice(2))[1].t); };
  trigger = () => fetch(`http://127.0.0.1:18300/broadcast?n=${M}&rate=${R}&payload=${payload}`);
}

await sleep(1000);
const rss0 = rss(server.pid);
const clients = [];
for (let i = 0; i < N; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, N - i) }, () => new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on('error', reject);
    ws.on('open', () => hello(ws, () => { ws.on('message', (d) => onFrame(d, ws)); resolve(); }));
    clients.push(ws);
  })));
}
await sleep(2000);
const rss1 = rss(server.pid);
const pids = [server.pid, ...extraPids];
const cpu0 = pids.map(cpu), t0 = Date.now();
await trigger();
const want = N * M;
for (let i = 0; i < 200 && delivered < want; i++) await sleep(50);
const cpu1 = pids.map(cpu), wall = (Date.now() - t0) / 1000;
lat.sort((a, b) => a - b);
const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
const serverCPU = cpu1[0] - cpu0[0];
const allCPU = cpu1.reduce((s, v, i) => s + v - cpu0[i], 0);
console.log(JSON.stringify({
  server: which, clients: N, messages: M, rate: R,
  idle_kB_per_conn: +((rss1 - rss0) / N / 1024).toFixed(1),
  delivered, lost: want - delivered, wall_s: +wall.toFixed(1),
  server_cpu_s: +serverCPU.toFixed(2), with_redis_cpu_s: +allCPU.toFixed(2),
  deliveries_per_server_cpu_s: Math.round(delivered / serverCPU),
  deliveries_per_cpu_s_incl_redis: Math.round(delivered / allCPU),
  p50_ms: q(0.5), p99_ms: q(0.99),
}));
clients.forEach((c) => c.terminate());
process.exit(0);
