// Rooms and progress (docs/protocol.md, section 10): room, joined and left
// events, join() and leave() with their ack or error, and partial replies
// of request() going to its onProgress.

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

// settledAfterFrames reports whether p has settled once every frame sent
// before a marker broadcast has been handled.
async function settledAfterFrames(env, p) {
  let settled = false;
  p.then(() => (settled = true), () => (settled = true));
  env.conn.send({ event: "dmb:broadcast", data: "marker" });
  const [data] = await env.events.next("broadcast");
  assert.equal(data, "marker");
  return settled;
}

test("room, joined and left events carry the room and the data", limit, async (t) => {
  const { conn, events } = await opened(t);
  conn.send({ event: "dmb:joined", room: "lobby" });
  assert.deepEqual(await events.next("joined"), ["lobby"]);
  conn.send({ event: "dmb:room", room: "lobby", data: { text: "hi", n: [1] } });
  assert.deepEqual(await events.next("room"), ["lobby", { text: "hi", n: [1] }]);
  conn.send({ event: "dmb:room", room: "game-7" });
  assert.deepEqual(await events.next("room"), ["game-7", undefined]);
  conn.send({ event: "dmb:left", room: "lobby" });
  assert.deepEqual(await events.next("left"), ["lobby"]);
  // Room messages are neither broadcasts nor directs.
  assert.deepEqual(events.log.filter(([e]) => e === "broadcast" || e === "direct"), []);
});

test("join sends dmb:join with an id and resolves on its ack, after joined", limit, async (t) => {
  const env = await opened(t);
  const sent = env.client.send("first");
  assert.deepEqual(await env.conn.nextFrame(), { event: "dmb:message", data: "first", id: 1 });
  const p = env.client.join("game-7");
  assert.deepEqual(await env.conn.nextFrame(), { event: "dmb:join", room: "game-7", id: 2 });

  env.conn.send({ event: "dmb:joined", room: "game-7" });
  assert.equal(await settledAfterFrames(env, p), false, "join settled before its ack");
  env.conn.send({ event: "dmb:ack", id: 1 });
  await sent;
  assert.equal(await settledAfterFrames(env, p), false, "join settled by another id's ack");
  env.conn.send({ event: "dmb:ack", id: 2 });
  assert.equal(await p, undefined);
  assert.deepEqual(env.events.log.filter(([e]) => e === "joined"), [["joined", "game-7"]]);
});

test("leave sends dmb:leave and resolves on its ack", limit, async (t) => {
  const env = await opened(t);
  const p = env.client.leave("game-7");
  const frame = await env.conn.nextFrame();
  assert.deepEqual(frame, { event: "dmb:leave", room: "game-7", id: 1 });
  env.conn.send({ event: "dmb:left", room: "game-7" });
  env.conn.send({ event: "dmb:ack", id: frame.id });
  await p;
  assert.deepEqual(await env.events.next("left"), ["game-7"]);
});

test("join and leave reject with DMB's error, which is no error event", limit, async (t) => {
  const env = await opened(t);
  for (const [call, text] of [
    [() => env.client.join("lobby"), "not allowed"],
    [() => env.client.join("bad room"), "invalid room name"],
    [() => env.client.join("r-101"), "too many rooms"],
    [() => env.client.leave("lobby"), "not allowed"],
  ]) {
    const p = call();
    const { id } = await env.conn.nextFrame();
    env.conn.send({ event: "dmb:error", id, error: text });
    await assert.rejects(p, (err) => err instanceof DMBError && err.message === text);
  }
  assert.deepEqual(env.events.log.filter(([e]) => e === "error"), []);
});

test("join rejects when not connected, and when the connection closes first", limit, async (t) => {
  const env = await opened(t, { random: () => 0, setTimeout: () => 0 });
  const p = env.client.join("lobby");
  await env.conn.nextFrame();
  env.conn.end(4009, "banned");
  await assert.rejects(p, { name: "DMBError", message: "connection closed", code: 4009 });
  await env.events.next("close");
  await assert.rejects(env.client.join("lobby"), { name: "DMBError", message: "not connected" });
  await assert.rejects(env.client.leave("lobby"), { name: "DMBError", message: "not connected" });
});

test("request hands partial replies to onProgress and resolves on the final one", limit, async (t) => {
  const env = await opened(t);
  const progress = [];
  const p = env.client.request({ kind: "build" }, { onProgress: (d) => progress.push(d) });
  const frame = await env.conn.nextFrame();
  assert.deepEqual(frame, { event: "dmb:message", data: { kind: "build" }, id: 1 });

  env.conn.send({ event: "dmb:ack", id: frame.id });
  env.conn.send({ event: "dmb:direct", data: { pct: 10 }, reply_to: frame.id, more: true });
  env.conn.send({ event: "dmb:direct", data: "another's", reply_to: frame.id + 1, more: true });
  env.conn.send({ event: "dmb:direct", data: { pct: 50 }, reply_to: frame.id, more: true });
  assert.equal(await settledAfterFrames(env, p), false, "request settled by a partial reply");
  assert.deepEqual(progress, [{ pct: 10 }, { pct: 50 }]);

  env.conn.send({ event: "dmb:direct", data: { done: true }, reply_to: frame.id });
  assert.deepEqual(await p, { done: true });
  assert.deepEqual(progress, [{ pct: 10 }, { pct: 50 }]);
  // Partial replies to the request were its own; the other was a direct.
  assert.deepEqual(env.events.log.filter(([e]) => e === "direct"), [["direct", "another's", frame.id + 1]]);
});

test("a reply with more other than true is final", limit, async (t) => {
  const env = await opened(t);
  const progress = [];
  const p = env.client.request("x", { onProgress: (d) => progress.push(d) });
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:direct", data: "final", reply_to: id, more: false });
  assert.equal(await p, "final");
  assert.deepEqual(progress, []);
});

test("partial replies without onProgress are dropped; the request waits on", limit, async (t) => {
  const env = await opened(t);
  const p = env.client.request("x");
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:direct", data: "half", reply_to: id, more: true });
  assert.equal(await settledAfterFrames(env, p), false, "request settled by a partial reply");
  env.conn.send({ event: "dmb:direct", data: "whole", reply_to: id });
  assert.equal(await p, "whole");
  assert.deepEqual(env.events.log.filter(([e]) => e === "direct"), []);
});

test("a partial reply to no pending request is a direct event", limit, async (t) => {
  const env = await opened(t);
  env.conn.send({ event: "dmb:direct", data: "late", reply_to: 42, more: true });
  assert.deepEqual(await env.events.next("direct"), ["late", 42]);
});

test("the timeout counts to the final reply, partial replies or not", limit, async (t) => {
  const env = await opened(t);
  const progress = [];
  const p = env.client.request("x", { timeout: 100, onProgress: (d) => progress.push(d) });
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:direct", data: 1, reply_to: id, more: true });
  await assert.rejects(p, { name: "DMBError", message: "request timed out" });
  assert.deepEqual(progress, [1]);
});

test("an onProgress that throws does not break the request", limit, async (t) => {
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
  const p = env.client.request("x", {
    onProgress: () => {
      throw new Error("progress bug");
    },
  });
  const { id } = await env.conn.nextFrame();
  env.conn.send({ event: "dmb:direct", data: 1, reply_to: id, more: true });
  env.conn.send({ event: "dmb:direct", data: 2, reply_to: id });
  assert.equal(await p, 2);
  assert.deepEqual(thrown, ["progress bug"]);
});
