// Frames in both directions: broadcast and direct events, send() and its
// ack or error, request() and its reply, and errors without an id.

import assert from "node:assert/strict";
import test from "node:test";

import { DMBError } from "../dmb.js";
import { connect, limit } from "../testdata/fakedmb.js";

// opened connects and waits until the client is open; the server answers
// nothing by itself.
async function opened(t, options) {
  const env = await connect(t, options);
  env.server.autoAck = false;
  env.conn = await env.server.nextConnection();
  await env.events.next("connected");
  return env;
}

// settled reports whether p has settled, once everything queued before it
// has run: a marker broadcast is sent after the frames under test, and the
// client handles frames in order.
async function settledAfterFrames(env, p) {
  let settled = false;
  p.then(() => (settled = true), () => (settled = true));
  env.conn.send({ event: "dmb:broadcast", data: "marker" });
  const [data] = await env.events.next("broadcast");
  assert.equal(data, "marker");
  return settled;
}

test("broadcast event carries the data", limit, async (t) => {
  const { conn, events } = await opened(t);
  conn.send({ event: "dmb:broadcast", data: { text: "hi", n: [1, 2] } });
  assert.deepEqual(await events.next("broadcast"), [{ text: "hi", n: [1, 2] }]);
});

test("direct event carries the data and reply_to, or undefined without one", limit, async (t) => {
  const { conn, events } = await opened(t);
  conn.send({ event: "dmb:direct", data: "for you", reply_to: 7 });
  assert.deepEqual(await events.next("direct"), ["for you", 7]);
  conn.send({ event: "dmb:direct", data: null });
  assert.deepEqual(await events.next("direct"), [null, undefined]);
});

test("send writes a dmb:message with increasing integer ids and resolves on its ack", limit, async (t) => {
  const env = await opened(t);
  const first = env.client.send({ text: "one" });
  assert.deepEqual(await env.conn.nextFrame(), { event: "dmb:message", data: { text: "one" }, id: 1 });
  const second = env.client.send("two");
  assert.deepEqual(await env.conn.nextFrame(), { event: "dmb:message", data: "two", id: 2 });

  env.conn.send({ event: "dmb:ack", id: 2 });
  assert.equal(await second, undefined);
  env.conn.send({ event: "dmb:ack", id: 99 });
  assert.equal(await settledAfterFrames(env, first), false, "send settled by another id's ack");
  env.conn.send({ event: "dmb:ack", id: 1 });
  await first;
});

test("send rejects with DMB's error text", limit, async (t) => {
  const env = await opened(t);
  for (const text of ["backend unavailable", "broker unavailable"]) {
    const p = env.client.send("x");
    const { id } = await env.conn.nextFrame();
    env.conn.send({ event: "dmb:error", id, error: text });
    await assert.rejects(p, (err) => err instanceof DMBError && err.message === text);
  }
  assert.deepEqual(env.events.log.filter(([e]) => e === "error"), [], "error events for answered ids");
});

test("send rejects when the connection closes with a code that ends the session", limit, async (t) => {
  const env = await opened(t, { random: () => 0 });
  const p = env.client.send("x");
  await env.conn.nextFrame();
  env.conn.end(1008, "rate limit exceeded");
  await assert.rejects(p, { name: "DMBError", message: "connection closed", code: 1008 });
});

test("send rejects at once when not connected, and queues nothing", limit, async (t) => {
  const env = await opened(t, { setTimeout: () => 0 });
  env.conn.end(4503, "no backend");
  await env.events.next("close");
  assert.equal(env.client.status, "reconnecting");
  await assert.rejects(env.client.send("lost"), { name: "DMBError", message: "not connected" });
});

test("send rejects data that is not JSON, and sends nothing", limit, async (t) => {
  const env = await opened(t);
  await assert.rejects(env.client.send({ n: 1n }), { name: "DMBError", message: /^send failed: .*BigInt/ });
  const ok = env.client.send("fine");
  assert.deepEqual(await env.conn.nextFrame(), { event: "dmb:message", data: "fine", id: 1 }, "first frame DMB got");
  env.conn.send({ event: "dmb:ack", id: 1 });
  await ok;
});

test("request resolves with the direct whose reply_to is its id, not on the ack or another reply", limit, async (t) => {
  const env = await opened(t);
  const p = env.client.request({ kind: "time" });
  const frame = await env.conn.nextFrame();
  assert.deepEqual(frame, { event: "dmb:message", data: { kind: "time" }, id: 1 });

  env.conn.send({ event: "dmb:ack", id: frame.id });
  env.conn.send({ event: "dmb:direct", data: "not yours", reply_to: frame.id + 1 });
  env.conn.send({ event: "dmb:direct", data: "no reply_to" });
  env.conn.send({ event: "dmb:direct", data: "a string id", reply_to: String(frame.id) });
  assert.equal(await settledAfterFrames(env, p), false, "request settled before its reply");

  env.conn.send({ event: "dmb:direct", data: { now: "2030-01-02T03:04:05Z" }, reply_to: frame.id });
  assert.deepEqual(await p, { now: "2030-01-02T03:04:05Z" });

  // The other directs were events; the reply was the request's alone.
  env.conn.send({ event: "dmb:direct", data: "after", reply_to: frame.id });
  await env.events.next("direct");
  await env.events.next("direct");
  await env.events.next("direct");
  assert.deepEqual(await env.events.next("direct"), ["after", frame.id]);
  assert.deepEqual(env.events.log.filter(([e]) => e === "direct"), [
    ["direct", "not yours", frame.id + 1],
    ["direct", "no reply_to", undefined],
    ["direct", "a string id", String(frame.id)],
    ["direct", "after", frame.id],
  ]);
});

test("request rejects with DMB's error text", limit, async (t) => {
  const env = await opened(t);
  const p = env.client.request("x");
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:error", id, error: "backend unavailable" });
  await assert.rejects(p, { name: "DMBError", message: "backend unavailable" });
});

test("request times out after its timeout, or requestTimeout by default", limit, async (t) => {
  const env = await opened(t, { requestTimeout: 40 });
  const started = Date.now();
  const p = env.client.request("x", { timeout: 20 });
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:ack", id });
  await assert.rejects(p, { name: "DMBError", message: "request timed out" });
  assert.ok(Date.now() - started >= 15, "timed out too early");

  const q = env.client.request("y");
  await env.conn.nextFrame();
  await assert.rejects(q, { message: "request timed out" });

  // A reply that comes too late is still a direct event, and harmless.
  env.conn.send({ event: "dmb:direct", data: "late", reply_to: id });
  assert.deepEqual(await env.events.next("direct"), ["late", id]);
});

// An acked request's reply went to the session that ended: the reconnect
// (greeted resumed: false) rejects it.
test("request rejects when the connection closes before the reply and no resume follows", limit, async (t) => {
  const env = await opened(t, { random: () => 0 });
  const p = env.client.request("x", { timeout: 60000 });
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:ack", id });
  env.conn.end(4503, "no live backend");
  await assert.rejects(p, { name: "DMBError", message: "connection closed", code: 4503 });
});

test("a dmb:error without an id is an error event", limit, async (t) => {
  const env = await opened(t);
  const pending = env.client.send("x");
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:error", error: "unknown event \"dmb:nope\"" });
  const [err] = await env.events.next("error");
  assert.ok(err instanceof DMBError);
  assert.equal(err.message, "unknown event \"dmb:nope\"");
  assert.equal(await settledAfterFrames(env, pending), false, "a pending send settled by an error without id");
  env.conn.send({ event: "dmb:ack", id });
  await pending;
});

test("a frame that is not a JSON object is an error event; the connection stays", limit, async (t) => {
  const env = await opened(t);
  env.conn.sendRaw("not json");
  const [err] = await env.events.next("error");
  assert.equal(err.message, "frame from DMB is not a JSON object");
  env.conn.send({ event: "dmb:broadcast", data: 1 });
  assert.deepEqual(await env.events.next("broadcast"), [1]);
  assert.equal(env.client.status, "open");
});

test("a listener that throws does not stop the others or the client", limit, async (t) => {
  const env = await opened(t);
  const thrown = [];
  const queue = globalThis.queueMicrotask;
  t.after(() => (globalThis.queueMicrotask = queue));
  globalThis.queueMicrotask = (fn) => {
    try {
      fn();
    } catch (err) {
      thrown.push(err.message);
    }
  };
  env.client.on("broadcast", () => {
    throw new Error("listener bug");
  });
  env.conn.send({ event: "dmb:broadcast", data: 1 });
  env.conn.send({ event: "dmb:broadcast", data: 2 });
  assert.deepEqual(await env.events.next("broadcast"), [1]);
  assert.deepEqual(await env.events.next("broadcast"), [2]);
  assert.deepEqual(thrown, ["listener bug", "listener bug"], "errors rethrown");
  assert.equal(env.client.status, "open");
});
