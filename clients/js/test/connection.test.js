// Connecting: the URL, the token, the connected event, status and close().

import assert from "node:assert/strict";
import test from "node:test";

import { DMB } from "../dmb.js";
import { FakeDMB, clientOptions, connect, limit, onSSE } from "../testdata/fakedmb.js";

test("connected event gives the cid and service; cid and status follow it", limit, async (t) => {
  const { client, events } = await connect(t);
  assert.equal(client.cid, null, "cid before dmb:connected");
  assert.equal(client.status, "connecting");

  const [info] = await events.next("connected");
  assert.deepEqual(info, { cid: "cid-1", service: "chat", resumed: false, recovered: false, transport: client.transport });
  assert.equal(client.transport, onSSE ? "sse" : "websocket");
  assert.equal(client.cid, "cid-1");
  assert.equal(client.status, "open");
  assert.deepEqual(events.statuses(), ["open"]);
});

test("status stays connecting until dmb:connected, even with the socket open", limit, async (t) => {
  const { server, client, events } = await connect(t);
  // greet is read when the connection arrives, which cannot have happened
  // yet: the client connects asynchronously.
  server.greet = false;
  const conn = await server.nextConnection();
  // A frame that arrives shows that the client's socket is open.
  conn.send({ event: "dmb:broadcast", data: "before connected" });
  await events.next("broadcast");
  await assert.rejects(client.send("early"), { name: "DMBError", message: "not connected" });
  assert.equal(client.status, "connecting");

  conn.send({ event: "dmb:connected", cid: "late", service: "chat" });
  await events.next("connected");
  assert.equal(client.status, "open");
  assert.equal(client.cid, "late");
  const sent = client.send("on time");
  assert.deepEqual(await conn.nextFrame(), { event: "dmb:message", data: "on time", id: 1 }, "first frame DMB got");
  await sent;
});

test("token goes into the URL, escaped", limit, async (t) => {
  const { server } = await connect(t, { token: "a.b c&d=" });
  const conn = await server.nextConnection();
  assert.equal(conn.wsURL, "/ws/chat?token=a.b%20c%26d%3D");
});

test("token is added to a URL that already has a query", limit, async (t) => {
  const server = await FakeDMB.start();
  t.after(() => server.close());
  const client = new DMB({ url: server.url("/ws/chat?x=1"), token: "tk", ...clientOptions() });
  t.after(() => client.close());
  const conn = await server.nextConnection();
  assert.equal(conn.wsURL, "/ws/chat?x=1&token=tk");
});

test("url defaults to ws(s)://{page host}/ws/{service}", { ...limit, skip: onSSE && "WebSocket only" }, (t) => {
  const urls = [];
  class RecordingWebSocket {
    constructor(url) {
      urls.push(url);
      this.readyState = 0;
    }
    send() {}
    close() {}
  }
  t.after(() => delete globalThis.location);
  for (const [protocol, token, want] of [
    ["https:", "tk", "wss://example.com:8443/ws/chat?token=tk"],
    ["http:", "tk", "ws://example.com:8443/ws/chat?token=tk"],
    ["http:", undefined, "ws://example.com:8443/ws/chat"],
  ]) {
    globalThis.location = { protocol, host: "example.com:8443" };
    new DMB({ service: "chat", token, WebSocket: RecordingWebSocket }).close();
    assert.equal(urls.at(-1), want, `${protocol} token=${token}`);
  }
});

test("a client needs a service or a url, and a WebSocket", limit, () => {
  class NoopWebSocket {
    send() {}
    close() {}
  }
  assert.throws(() => new DMB({ WebSocket: NoopWebSocket }), TypeError);
  assert.throws(() => new DMB({ service: "chat", WebSocket: NoopWebSocket }), /url is required outside a browser/);
  if (globalThis.WebSocket === undefined) {
    assert.throws(() => new DMB({ url: "ws://127.0.0.1:1/ws/chat" }), /no WebSocket constructor/);
  }
});

test("close() closes with 1000 for good: status closed, close event, no retry", limit, async (t) => {
  const timers = [];
  const { server, client, events } = await connect(t, {
    setTimeout: (fn, ms) => timers.push(ms),
  });
  const conn = await server.nextConnection();
  await events.next("connected");

  client.close();
  assert.equal(client.status, "closed");
  assert.equal(client.cid, null);
  const [info] = await events.next("close");
  assert.deepEqual(info, { code: 1000, reason: "closed by client", willRetry: false });
  if (!onSSE) assert.equal((await conn.closed).code, 1000, "code the server saw");
  assert.deepEqual(events.statuses(), ["open", "closed"]);
  assert.deepEqual(timers, [], "timers set (a reconnect would set one)");
  await assert.rejects(client.send("after"), { message: "not connected" });
});

test("after close(), frames still in flight are not emitted", limit, async (t) => {
  const { server, client, events } = await connect(t);
  const conn = await server.nextConnection();
  await events.next("connected");
  client.on("broadcast", (data) => {
    if (data === "first") client.close();
  });
  conn.send({ event: "dmb:broadcast", data: "first" });
  conn.send({ event: "dmb:broadcast", data: "second" });
  conn.send({ event: "dmb:connected", cid: "again", service: "chat" });
  await events.next("close");
  assert.deepEqual(events.log.filter(([e]) => e === "broadcast"), [["broadcast", "first"]]);
  assert.equal(client.status, "closed");
  assert.equal(client.cid, null);
});

test("off removes a listener", limit, async (t) => {
  const { server, client, events } = await connect(t);
  const seen = [];
  const fn = (data) => seen.push(data);
  client.on("broadcast", fn);
  const conn = await server.nextConnection();
  conn.send({ event: "dmb:broadcast", data: 1 });
  await events.next("broadcast");
  client.off("broadcast", fn);
  conn.send({ event: "dmb:broadcast", data: 2 });
  await events.next("broadcast");
  assert.deepEqual(seen, [1]);
});
