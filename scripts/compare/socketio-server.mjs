// A minimal Socket.IO 4 server: every connection is accepted (WebSocket
// transport only); GET /broadcast?n=N&rate=R emits N messages at R/s to all.
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const http = createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  if (u.pathname !== '/broadcast') { res.writeHead(404).end(); return; }
  const n = Number(u.searchParams.get('n')), rate = Number(u.searchParams.get('rate'));
  const payload = u.searchParams.get('payload') ?? '';
  let i = 0;
  const timer = setInterval(() => {
    io.emit('m', { i, t: Date.now(), p: payload });
    if (++i >= n) { clearInterval(timer); res.end('ok'); }
  }, 1000 / rate);
});
const io = new Server(http, { transports: ['websocket'], serveClient: false });
http.listen(18300, '127.0.0.1');
