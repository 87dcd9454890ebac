// Resumable sessions (docs/protocol.md, section 11): the resume URL with the
// newest session token and the last offset of each stream, frames sent again
// after a drop, the codes that do not resume, and what the app is told.

import assert from "node:assert/strict";
import test from "node:test";

import { connect, limit } from "../testdata/fakedmb.js";

// closeWith makes the server end conn with code; 1006 cannot be sent in a
// close frame, it is what the client sees when the connection just drops.
function closeWith(conn, code, reason) {
  conn.end(code, reason);
}

// resumable connects a client that reconnects at once and greets nothing by
// itself: the test greets each connection with conn.greet.
async function resumable(t, options) {
  const env = await connect(t, { random: () => 0, ...options });
  env.server.greet = false;
  env.server.autoAck = false;
  env.conn = await env.server.nextConnection();
  env.conn.greet();
  await env.events.next("connected");
  return env;
}

// reconnected drops env's connection with code and resolves with the next
// one, not greeted yet.
async function reconnected(env, code = 1006, reason = "") {
  closeWith(env.conn, code, reason);
  await env.events.next("close");
  env.conn = await env.server.nextConnection();
  return env.conn;
}

// marker sends a broadcast and waits for it, passing the broadcasts before
// it: every frame sent before it has been handled.
async function marker(env) {
  env.conn.send({ event: "dmb:broadcast", data: "marker" });
  while ((await env.events.next("broadcast"))[0] !== "marker");
}

test("a first connection carries no resume", limit, async (t) => {
  const env = await resumable(t, { token: "tk" });
  assert.equal(env.conn.wsURL, "/ws/chat?token=tk");
});

test("the resume URL has the token, the session and the last offset of each stream", limit, async (t) => {
  const env = await resumable(t, { token: "tk" });
  env.conn.send({ event: "dmb:broadcast", data: 1, offset: "42:1000-0" });
  env.conn.send({ event: "dmb:room", room: "lobby", data: 2, offset: "43:1000-5" });
  env.conn.send({ event: "dmb:direct", data: 3, offset: "42:1001-0" });
  env.conn.send({ event: "dmb:joined", room: "lobby", offset: "44:7-0" });
  env.conn.send({ event: "dmb:left", room: "lobby", offset: "45:a:b" });
  env.conn.send({ event: "dmb:broadcast", data: "live only" });
  env.conn.send({ event: "dmb:broadcast", data: "no stream", offset: "nocolon" });
  await marker(env);

  const conn = await reconnected(env);
  assert.equal(conn.query.get("token"), "tk");
  assert.equal(conn.query.get("resume"), "session-1");
  // Least recently updated first; stream 42 moved last but one.
  assert.equal(conn.query.get("offset"), "43:1000-5,42:1001-0,44:7-0,45:a:b");
  assert.equal(
    conn.wsURL,
    "/ws/chat?token=tk&resume=session-1&offset=43%3A1000-5,42%3A1001-0,44%3A7-0,45%3Aa%3Ab",
    "the URL, escaped",
  );
});

test("at most 32 streams are kept, dropping the one updated least recently", limit, async (t) => {
  const env = await resumable(t);
  for (let s = 0; s < 32; s++) env.conn.send({ event: "dmb:broadcast", data: s, offset: `${s}:1` });
  env.conn.send({ event: "dmb:broadcast", data: 0, offset: "0:2" }); // stream 0 is now the newest
  env.conn.send({ event: "dmb:broadcast", data: 32, offset: "32:1" }); // a 33rd stream: 1 goes
  await marker(env);

  const conn = await reconnected(env);
  const want = [];
  for (let s = 2; s < 32; s++) want.push(`${s}:1`);
  want.push("0:2", "32:1");
  assert.deepEqual(conn.query.get("offset").split(","), want);
});

test("dmb:session replaces the token, and so does each dmb:connected", limit, async (t) => {
  const env = await resumable(t);
  env.conn.send({ event: "dmb:joined", room: "lobby" });
  env.conn.send({ event: "dmb:session", session: "after-join" });
  env.conn.send({ event: "dmb:left", room: "lobby" });
  env.conn.send({ event: "dmb:session", session: "after-leave+/=" });
  await marker(env);

  let conn = await reconnected(env, 1001, "going away");
  assert.equal(conn.query.get("resume"), "after-leave+/=");
  assert.match(conn.wsURL, /resume=after-leave%2B%2F%3D$/);
  conn.greet({ cid: "cid-1", session: "resumed-token", resumed: true, recovered: true });
  await env.events.next("connected");

  conn = await reconnected(env, 4008, "slow consumer");
  assert.equal(conn.query.get("resume"), "resumed-token");
});

test("frames DMB did not answer are sent again with the same id, before new ones", limit, async (t) => {
  const env = await resumable(t);
  const sent = env.client.send("acked");
  const answered = env.client.request("acked request");
  const lost = env.client.send("unanswered");
  const asked = env.client.request("unanswered request");
  const joined = env.client.join("lobby");
  for (let id = 1; id <= 5; id++) assert.equal((await env.conn.nextFrame()).id, id);
  env.conn.send({ event: "dmb:ack", id: 1 });
  env.conn.send({ event: "dmb:ack", id: 2 });
  await sent;
  await marker(env);

  const conn = await reconnected(env, 1001, "going away");
  // The app sends as soon as it hears the connection is open.
  let fresh;
  env.client.on("connected", () => (fresh = env.client.send("new")));
  conn.greet({ cid: "cid-1", resumed: true, recovered: true });
  assert.deepEqual(await conn.nextFrame(), { event: "dmb:message", data: "unanswered", id: 3 });
  assert.deepEqual(await conn.nextFrame(), { event: "dmb:message", data: "unanswered request", id: 4 });
  assert.deepEqual(await conn.nextFrame(), { event: "dmb:join", room: "lobby", id: 5 });
  assert.deepEqual(await conn.nextFrame(), { event: "dmb:message", data: "new", id: 6 });

  conn.send({ event: "dmb:ack", id: 3 });
  conn.send({ event: "dmb:ack", id: 4 });
  conn.send({ event: "dmb:ack", id: 5 });
  conn.send({ event: "dmb:ack", id: 6 });
  conn.send({ event: "dmb:direct", data: "answer 2", reply_to: 2 });
  conn.send({ event: "dmb:direct", data: "answer 4", reply_to: 4 });
  await Promise.all([lost, joined, fresh]);
  assert.equal(await answered, "answer 2");
  assert.equal(await asked, "answer 4");
  assert.deepEqual(env.events.log.filter(([e]) => e === "error" || e === "direct"), []);
});

test("a fresh session after a drop gets the unanswered frames; acked requests reject", limit, async (t) => {
  const env = await resumable(t);
  env.conn.send({ event: "dmb:broadcast", data: 1, offset: "42:1" });
  const answered = env.client.request("acked request");
  const lost = env.client.send("unanswered");
  await env.conn.nextFrame();
  await env.conn.nextFrame();
  env.conn.send({ event: "dmb:ack", id: 1 });
  await marker(env);

  let conn = await reconnected(env);
  assert.equal(conn.query.get("offset"), "42:1");
  conn.greet({ cid: "new-cid", session: "new-session", resumed: false });
  await assert.rejects(answered, { name: "DMBError", message: "connection closed", code: 1006 });
  assert.deepEqual(await conn.nextFrame(), { event: "dmb:message", data: "unanswered", id: 2 });
  conn.send({ event: "dmb:ack", id: 2 });
  await lost;
  assert.equal(env.client.cid, "new-cid");

  // The old session's offsets are gone with it.
  conn = await reconnected(env);
  assert.equal(conn.query.get("resume"), "new-session");
  assert.equal(conn.query.get("offset"), null);
});

for (const [code, reason] of [
  [1003, "binary frame"],
  [1008, "rate limit exceeded"],
  [1009, "message too big"],
]) {
  test(`close ${code} reconnects without resume and rejects what was pending`, limit, async (t) => {
    const env = await resumable(t);
    env.conn.send({ event: "dmb:broadcast", data: 1, offset: "42:1" });
    const rejected = assert.rejects(env.client.send("x"), { name: "DMBError", message: "connection closed", code });
    await env.conn.nextFrame();

    const conn = await reconnected(env, code, reason);
    await rejected;
    assert.equal(conn.wsURL, "/ws/chat");
    conn.greet();
    await env.events.next("connected");
    const after = env.client.send("after");
    assert.deepEqual(await conn.nextFrame(), { event: "dmb:message", data: "after", id: 2 }, "first frame DMB got");
    conn.send({ event: "dmb:ack", id: 2 });
    await after;
  });
}

for (const [code, reason] of [
  [4009, "banned"],
  [4010, "session resumed elsewhere"],
]) {
  test(`close ${code} does not resume: closed, pending calls reject`, limit, async (t) => {
    const timers = [];
    const env = await resumable(t, { setTimeout: (fn, ms) => timers.push(ms) });
    const rejected = assert.rejects(env.client.send("x"), { name: "DMBError", message: "connection closed", code });
    await env.conn.nextFrame();
    closeWith(env.conn, code, reason);
    assert.deepEqual(await env.events.next("close"), [{ code, reason, willRetry: false }]);
    await rejected;
    assert.equal(env.client.status, "closed");
    assert.deepEqual(timers, [], "timers set (a reconnect would set one)");
    assert.equal(env.server.count, 1, "connections");
  });
}

test("close() does not resume: pending calls reject, nothing is sent again", limit, async (t) => {
  const timers = [];
  const env = await resumable(t, { setTimeout: (fn, ms) => timers.push(ms) });
  const p = env.client.send("x");
  await env.conn.nextFrame();
  env.client.close();
  await assert.rejects(p, { name: "DMBError", message: "connection closed" });
  assert.deepEqual(await env.events.next("close"), [{ code: 1000, reason: "closed by client", willRetry: false }]);
  assert.deepEqual(timers, [], "timers set (a reconnect would set one)");
  assert.equal(env.server.count, 1, "connections");
});

test("the connected event tells whether the session was resumed and recovered", limit, async (t) => {
  const env = await resumable(t);
  assert.deepEqual(env.events.log.find(([e]) => e === "connected"), [
    "connected",
    { cid: "cid-1", service: "chat", resumed: false, recovered: false, transport: env.client.transport },
  ]);
  for (const [greeting, want] of [
    [{ cid: "cid-1", resumed: true, recovered: true }, { cid: "cid-1", resumed: true, recovered: true }],
    [{ cid: "cid-1", resumed: true, recovered: false }, { cid: "cid-1", resumed: true, recovered: false }],
    [{ cid: "cid-9", resumed: false, recovered: true }, { cid: "cid-9", resumed: false, recovered: false }],
    [{ cid: "cid-10", resumed: undefined }, { cid: "cid-10", resumed: false, recovered: false }],
  ]) {
    const conn = await reconnected(env);
    conn.greet(greeting);
    assert.deepEqual(await env.events.next("connected"), [{ service: "chat", transport: env.client.transport, ...want }], JSON.stringify(greeting));
    assert.equal(env.client.cid, want.cid);
    assert.equal(env.client.status, "open");
  }
});
