// Reconnecting: which close codes retry and which stop, the backoff with
// full jitter, and close() while a retry waits.

import assert from "node:assert/strict";
import test from "node:test";

import { WebSocket } from "ws";

import { connect, eventSource, limit } from "../testdata/fakedmb.js";

// closeWith makes the server end conn with code; 1006 cannot be sent in a
// close frame, it is what the client sees when the connection just drops.
function closeWith(conn, code, reason) {
  conn.end(code, reason);
}

// counting counts the connections a client opens, WebSockets and event
// streams: pass its options to the client.
function counting() {
  const counter = { n: 0 };
  const { EventSource } = eventSource();
  counter.options = {
    WebSocket: class extends WebSocket {
      constructor(...args) {
        super(...args);
        counter.n++;
      }
    },
    EventSource: class extends EventSource {
      constructor(...args) {
        super(...args);
        counter.n++;
      }
    },
  };
  return counter;
}

for (const [code, reason] of [
  [1001, "going away"],
  [1006, ""],
  [1011, "internal error"],
  [4503, "no live backend"],
  [4008, "slow consumer"],
  [4000, "a code not listed"],
]) {
  test(`close ${code} reconnects: reconnecting, then open with a new cid`, limit, async (t) => {
    const { server, client, events } = await connect(t, { random: () => 0 });
    const first = await server.nextConnection();
    await events.next("connected");
    assert.equal(client.cid, "cid-1");

    closeWith(first, code, reason);
    const [info] = await events.next("close");
    assert.deepEqual(info, { code, reason, willRetry: true });
    assert.equal(client.status, "reconnecting");
    assert.equal(client.cid, null, "cid while reconnecting");

    const [again] = await events.next("connected");
    assert.deepEqual(again, { cid: "cid-2", service: "chat", resumed: false, recovered: false, transport: client.transport });
    assert.equal(client.cid, "cid-2");
    assert.equal(client.status, "open");
    assert.deepEqual(events.statuses(), ["open", "reconnecting", "open"]);
    assert.equal(server.count, 2);
  });
}

for (const [code, reason, greeted] of [
  [4001, "token expired", false],
  [4004, "unknown service", false],
  [4009, "banned", true],
  [4010, "session resumed elsewhere", true],
]) {
  test(`close ${code} stops: close event without retry, status closed`, limit, async (t) => {
    const timers = [];
    const sockets = counting();
    const { server, client, events } = await connect(t, {
      ...sockets.options,
      setTimeout: (fn, ms) => timers.push(ms),
    });
    server.greet = greeted;
    const conn = await server.nextConnection();
    if (greeted) await events.next("connected");

    closeWith(conn, code, reason);
    const [info] = await events.next("close");
    assert.deepEqual(info, { code, reason, willRetry: false });
    assert.equal(client.status, "closed");
    assert.deepEqual(events.statuses(), greeted ? ["open", "closed"] : ["closed"]);
    assert.deepEqual(timers, [], "timers set (a reconnect would set one)");
    assert.equal(sockets.n, 1, "sockets opened");
    await assert.rejects(client.send("x"), { message: "not connected" });
  });
}

test("backoff doubles up to max, is jittered, and starts over after a connection", limit, async (t) => {
  const randoms = [0.5, 0.9, 0.1, 0.99, 0.5, 0.25, 0.3];
  const delays = [];
  const { server, client, events } = await connect(t, {
    backoff: { initial: 100, max: 1000 },
    random: () => randoms[delays.length],
    // Record the delay, then retry at once: the test does not wait for it.
    setTimeout: (fn, ms) => {
      delays.push(ms);
      return setTimeout(fn, 0);
    },
  });
  server.greet = false;
  // Six refusals in a row: caps 100, 200, 400, 800, 1000, 1000.
  for (let i = 0; i < 6; i++) {
    closeWith(await server.nextConnection(), 4503, "no live backend");
    await events.next("close");
  }
  // A connection that works resets the backoff; its loss retries from 100.
  const conn = await server.nextConnection();
  conn.send({ event: "dmb:connected", cid: "ok", service: "chat" });
  await events.next("connected");
  closeWith(conn, 1006);
  await events.next("close");
  await server.nextConnection();
  client.close();

  assert.deepEqual(delays, [50, 180, 40, 792, 500, 250, 30]);
});

test("backoff defaults to 500 ms doubling up to 30 s", limit, async (t) => {
  const delays = [];
  const { server, events } = await connect(t, {
    random: () => 0.5,
    setTimeout: (fn, ms) => {
      delays.push(ms);
      return setTimeout(fn, 0);
    },
  });
  server.greet = false;
  for (let i = 0; i < 8; i++) {
    closeWith(await server.nextConnection(), 4503, "no live backend");
    await events.next("close");
  }
  // Half of each cap.
  assert.deepEqual(delays, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
});

test("close() while a retry waits cancels it for good", limit, async (t) => {
  const waiting = [];
  const cleared = [];
  const sockets = counting();
  const { server, client, events } = await connect(t, {
    ...sockets.options,
    random: () => 0.5,
    setTimeout: (fn, ms) => waiting.push(fn) - 1, // never fires by itself
    clearTimeout: (handle) => cleared.push(handle),
  });
  const conn = await server.nextConnection();
  await events.next("connected");
  closeWith(conn, 1001, "going away");
  await events.next("close");
  assert.equal(client.status, "reconnecting");
  assert.equal(waiting.length, 1, "retry timers");

  client.close();
  assert.equal(client.status, "closed");
  assert.deepEqual(cleared, [0], "timers cleared");
  const [info] = await events.next("close");
  assert.deepEqual(info, { code: 1000, reason: "closed by client", willRetry: false });

  waiting[0](); // a timer that fired anyway must not connect
  assert.equal(sockets.n, 1, "sockets opened");
  assert.deepEqual(events.statuses(), ["open", "reconnecting", "closed"]);
});

test("close() in a close listener stops the retry it announced", limit, async (t) => {
  const timers = [];
  const { server, client, events } = await connect(t, { setTimeout: (fn, ms) => timers.push(ms) });
  const conn = await server.nextConnection();
  await events.next("connected");
  client.on("close", ({ willRetry }) => {
    if (willRetry) client.close();
  });
  closeWith(conn, 1001, "going away");
  assert.deepEqual(await events.next("close"), [{ code: 1001, reason: "going away", willRetry: true }]);
  assert.deepEqual(await events.next("close"), [{ code: 1000, reason: "closed by client", willRetry: false }]);
  assert.equal(client.status, "closed");
  assert.deepEqual(timers, [], "timers set (a reconnect would set one)");
});
