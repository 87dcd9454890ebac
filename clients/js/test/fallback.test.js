// The HTTP fallback (docs/protocol.md, section 12): when auto falls back to
// the event stream and back, options.transport, the stream's URL, POSTs one
// at a time, dmb:close, and a drop. Every other test runs on both
// transports: the last test here runs the other files on the fallback.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import path from "node:path";
import test from "node:test";
import { fileURLToPath } from "node:url";

import { WebSocket } from "ws";

import { DMB } from "../dmb.js";
import { connect, eventSource, limit, onSSE } from "../testdata/fakedmb.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("auto falls back to the event stream when WebSockets fail twice before they open", limit, async (t) => {
  const { server, client, events } = await connect(t, { transport: "auto", random: () => 0 });
  server.refuseWebSocket = true; // before the client's first try: it connects asynchronously
  assert.equal(client.transport, "websocket");
  for (let i = 0; i < 2; i++) {
    assert.deepEqual(await events.next("close"), [{ code: 1006, reason: "", willRetry: true }]);
  }
  const conn = await server.nextConnection();
  assert.equal(conn.transport, "sse");
  const [info] = await events.next("connected");
  assert.deepEqual(info, { cid: "cid-1", service: "chat", resumed: false, recovered: false, transport: "sse" });
  assert.equal(client.transport, "sse");
  assert.deepEqual(events.statuses(), ["reconnecting", "open"]);

  // It stays on the fallback after a drop, and resumes on it.
  conn.drop();
  await events.next("close");
  const again = await server.nextConnection();
  assert.equal(again.transport, "sse");
  assert.equal(again.query.get("resume"), "session-1");
});

test("auto uses the event stream at once where there is no WebSocket", limit, async (t) => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  delete globalThis.WebSocket; // Node 22 has one
  t.after(() => saved && Object.defineProperty(globalThis, "WebSocket", saved));
  const { server, client, events } = await connect(t, { transport: undefined, WebSocket: undefined });
  assert.equal(client.transport, "sse");
  assert.equal((await server.nextConnection()).transport, "sse");
  assert.equal((await events.next("connected"))[0].transport, "sse");
  assert.deepEqual(events.log.filter(([e]) => e === "close"), [], "close events before it");
});

test("auto goes back to WebSockets when the event stream fails twice before it opens", limit, async (t) => {
  const { server, client, events } = await connect(t, { transport: "auto", random: () => 0, sseUrl: "http://127.0.0.1:1/nowhere" });
  server.refuseWebSocket = true;
  const tried = [];
  client.on("close", () => tried.push(client.transport));
  for (let i = 0; i < 4; i++) await events.next("close");
  // The transport after each failure: the next one to try.
  assert.deepEqual(tried, ["websocket", "sse", "sse", "websocket"]);
  server.refuseWebSocket = false;
  const conn = await server.nextConnection();
  assert.equal(conn.transport, "websocket");
  assert.equal((await events.next("connected"))[0].transport, "websocket");
});

test('transport "websocket" never falls back', limit, async (t) => {
  const timers = [];
  const { server, client, events } = await connect(t, {
    transport: "websocket",
    random: () => 0,
    setTimeout: (fn, ms) => timers.push(setTimeout(fn, 0)),
  });
  server.refuseWebSocket = true;
  for (let i = 0; i < 4; i++) await events.next("close");
  assert.equal(client.transport, "websocket");
  assert.equal(server.count, 0, "connections the server took");
});

test('transport "sse": the stream URL, the token, POSTs of JSON', limit, async (t) => {
  const { server, client, events } = await connect(t, { transport: "sse", token: "a b" });
  assert.equal(client.transport, "sse");
  const conn = await server.nextConnection();
  assert.equal(conn.url, "/sse/chat?token=a%20b");
  await events.next("connected");
  await client.send({ text: "hi" });
  assert.deepEqual(conn.posts, [{ body: '{"event":"dmb:message","data":{"text":"hi"},"id":1}', contentType: "application/json" }]);
});

test("the stream's URL follows url: http(s) for ws(s), /sse/ for /ws/; sseUrl overrides it", limit, () => {
  const urls = [];
  class RecordingEventSource {
    constructor(url) {
      urls.push(url);
    }
    addEventListener() {}
    close() {}
  }
  const fetch = () => new Promise(() => {});
  for (const [options, want] of [
    [{ url: "wss://example.com/base/ws/chat?x=1", token: "tk" }, "https://example.com/base/sse/chat?x=1&token=tk"],
    [{ url: "ws://127.0.0.1:8082/ws/chat" }, "http://127.0.0.1:8082/sse/chat"],
    [{ url: "ws://h/odd", sseUrl: "https://h/events/chat", token: "tk" }, "https://h/events/chat?token=tk"],
  ]) {
    new DMB({ ...options, transport: "sse", EventSource: RecordingEventSource, fetch }).close();
    assert.equal(urls.at(-1), want, JSON.stringify(options));
  }
  assert.throws(() => new DMB({ url: "ws://h/odd", transport: "sse", EventSource: RecordingEventSource, fetch }), /options.sseUrl/);
  // Without a stream URL, auto has WebSockets only.
  const c = new DMB({ url: "ws://127.0.0.1:1/odd", EventSource: RecordingEventSource, fetch, WebSocket });
  assert.equal(c.transport, "websocket");
  c.close();
});

test("options.transport is checked, and needs its constructors", limit, () => {
  assert.throws(() => new DMB({ url: "ws://h/ws/chat", WebSocket, transport: "pigeon" }), /must be "auto", "websocket" or "sse"/);
  assert.throws(() => new DMB({ url: "ws://h/ws/chat", transport: "sse", EventSource: undefined, fetch: () => {} }), /no EventSource/);
  if (globalThis.WebSocket === undefined) {
    assert.throws(() => new DMB({ url: "ws://h/ws/chat", transport: "websocket", EventSource: class {} }), /no WebSocket constructor/);
  }
});

test("frames sent while a POST is in flight go in the next POST, in order", limit, async (t) => {
  const { server, client, events } = await connect(t, { transport: "sse" });
  const conn = await server.nextConnection();
  await events.next("connected");
  const release = server.holdPosts();
  const sent = [client.send(1)];
  await conn.nextFrame(); // the first POST is in, its answer held
  sent.push(client.send(2), client.request(3), client.join("lobby"));
  await sleep(50);
  assert.equal(conn.posts.length, 1, "POSTs while the first is in flight");
  release();
  for (const want of [2, 3, 4]) assert.equal((await conn.nextFrame()).id, want);
  assert.deepEqual(conn.posts.map((p) => p.body.split("\n").map((l) => JSON.parse(l).id)), [[1], [2, 3, 4]]);
  conn.send({ event: "dmb:direct", reply_to: 3, data: "three" });
  conn.send({ event: "dmb:ack", id: 4 });
  assert.deepEqual(await Promise.all(sent), [undefined, undefined, "three", undefined]);
});

test("dmb:close ends the stream as a close frame: its code and reason, its rules", limit, async (t) => {
  const es = eventSource();
  const { server, client, events } = await connect(t, { transport: "sse", EventSource: es.EventSource, random: () => 0 });
  let conn = await server.nextConnection();
  await events.next("connected");
  conn.end(1001, "going away");
  assert.deepEqual(await events.next("close"), [{ code: 1001, reason: "going away", willRetry: true }]);
  assert.equal(es.instances[0].closed, true, "the first EventSource closed");
  conn = await server.nextConnection();
  assert.equal(conn.query.get("resume"), "session-1");
  await events.next("connected");
  conn.end(4009, "banned");
  assert.deepEqual(await events.next("close"), [{ code: 4009, reason: "banned", willRetry: false }]);
  assert.equal(client.status, "closed");
  await sleep(50);
  assert.equal(server.count, 2, "connections");
});

test("a dropped stream is 1006: dmb.js closes the EventSource and resumes by itself", limit, async (t) => {
  const es = eventSource();
  const { server, client, events } = await connect(t, { transport: "sse", EventSource: es.EventSource, random: () => 0 });
  server.autoAck = false;
  const conn = await server.nextConnection();
  await events.next("connected");
  const p = client.send("unanswered");
  await conn.nextFrame();
  conn.drop();
  assert.deepEqual(await events.next("close"), [{ code: 1006, reason: "", willRetry: true }]);
  assert.equal(es.instances[0].closed, true, "the dropped EventSource was closed, not left to reconnect");
  const again = await server.nextConnection();
  assert.equal(again.query.get("resume"), "session-1");
  again.greet({ cid: conn.cid, resumed: true, recovered: true });
  const frame = await again.nextFrame();
  assert.deepEqual(frame, { event: "dmb:message", data: "unanswered", id: 1 }, "sent again");
  again.send({ event: "dmb:ack", id: 1 });
  await p;
  await sleep(50);
  assert.equal(server.count, 2, "connections (an EventSource reconnecting by itself would make more)");
  assert.equal(es.instances.length, 2, "EventSources");
});

test("a POST answered 404 loses the connection; what was not answered goes again", limit, async (t) => {
  const { server, client, events } = await connect(t, { transport: "sse", random: () => 0 });
  server.autoAck = false;
  const conn = await server.nextConnection();
  await events.next("connected");
  server.streams.clear(); // the stream is gone, for POSTs
  const p = client.send("x");
  assert.deepEqual(await events.next("close"), [{ code: 1006, reason: "POST answered 404", willRetry: true }]);
  const again = await server.nextConnection();
  again.greet({ cid: conn.cid, resumed: true });
  assert.deepEqual(await again.nextFrame(), { event: "dmb:message", data: "x", id: 1 });
  again.send({ event: "dmb:ack", id: 1 });
  await p;
});

test("every other test passes on the fallback", { timeout: 120000, skip: onSSE && "running on it already" }, () => {
  const dir = path.dirname(fileURLToPath(import.meta.url));
  const files = readdirSync(dir).filter((f) => f.endsWith(".test.js") && f !== path.basename(fileURLToPath(import.meta.url)));
  const run = spawnSync(process.execPath, ["--test", ...files.map((f) => path.join(dir, f))], {
    env: { ...process.env, DMB_TEST_TRANSPORT: "sse", NODE_TEST_CONTEXT: undefined },
    encoding: "utf8",
    timeout: 110000,
  });
  assert.equal(run.status, 0, `node --test on the fallback failed:\n${run.stdout}\n${run.stderr}`);
  assert.match(run.stdout, /# fail 0/);
});
