// A fake DMB node for dmb.js's tests: a ws WebSocketServer on a free
// loopback port that speaks the client frames of docs/protocol.md (sections 3
// to 5, 10 and 11), driven step by step by the test. It lives outside test/
// because `node --test test/` runs every .js file under a directory named test.

import { WebSocket, WebSocketServer } from "ws";

import { DMB } from "../dmb.js";

/** How long any wait of a test may take before it fails. */
export const DEADLINE = 3000;

/**
 * Options of every test: a promise of dmb.js that never settles fails its
 * test instead of hanging the run.
 */
export const limit = { timeout: 10000 };

/**
 * deadline resolves with promise's value, or rejects when ms pass first.
 * @template T
 * @param {Promise<T>} promise
 * @param {string} what
 * @param {number} [ms]
 * @returns {Promise<T>}
 */
export function deadline(promise, what, ms = DEADLINE) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Queue hands out pushed items in order to next(), waiting for them. */
export class Queue {
  constructor() {
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  /** next resolves with the next item, or rejects after the deadline. */
  next(what = "an item") {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    let waiter;
    const p = new Promise((resolve) => {
      waiter = resolve;
      this.waiters.push(resolve);
    });
    return deadline(p, what).catch((err) => {
      // Take the dead waiter out, or it would swallow a later item.
      this.waiters = this.waiters.filter((w) => w !== waiter);
      throw err;
    });
  }
}

/**
 * record logs every event of a DMB client, from now on, and lets a test
 * wait for them in order, per event name, with a deadline.
 * @param {import("../dmb.js").DMB} client
 */
export function record(client) {
  const queues = new Map();
  const log = [];
  const queue = (event) => {
    if (!queues.has(event)) queues.set(event, new Queue());
    return queues.get(event);
  };
  for (const event of ["connected", "broadcast", "direct", "room", "joined", "left", "error", "close", "status"]) {
    client.on(event, (...args) => {
      log.push([event, ...args]);
      queue(event).push(args);
    });
  }
  return {
    /** Every event so far, as [name, ...args]. */
    log,
    /** next resolves with the args of the next event named event. */
    next: (event) => queue(event).next(`the ${event} event`),
    /** statuses lists the status events so far. */
    statuses: () => log.filter(([e]) => e === "status").map(([, s]) => s),
  };
}

/**
 * FakeDMB is the server side. Each connection greets the client with
 * dmb:connected, cid "cid-1", "cid-2", ..., session "session-1",
 * "session-2", ... and resumed false, unless greet is turned off (then the
 * test greets with conn.greet), and acks every dmb:message that has an id
 * unless autoAck is off. A test takes connections with nextConnection() and
 * each connection's frames with conn.nextFrame(); conn.query is the
 * connection's URL query, decoded.
 */
export class FakeDMB {
  /** start listens on 127.0.0.1 on a free port. */
  static async start() {
    const s = new FakeDMB();
    s.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await deadline(new Promise((resolve, reject) => {
      s.wss.once("listening", resolve);
      s.wss.once("error", reject);
    }), "the fake DMB to listen");
    s.wss.on("connection", (socket, req) => s._accept(socket, req));
    return s;
  }

  constructor() {
    this.greet = true;
    this.autoAck = true;
    this.count = 0; // connections accepted
    this.connections = new Queue();
    this.sockets = new Set();
  }

  /** url returns the address of path on this server. */
  url(path = "/ws/chat") {
    return `ws://127.0.0.1:${this.wss.address().port}${path}`;
  }

  /** nextConnection resolves with the next connection: {socket, url, query, cid, nextFrame, send, greet}. */
  nextConnection() {
    return this.connections.next("a connection to the fake DMB");
  }

  _accept(socket, req) {
    const n = ++this.count;
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    const frames = new Queue();
    const conn = {
      socket,
      url: req.url,
      query: new URL(req.url, "ws://fake").searchParams,
      cid: `cid-${n}`,
      send: (frame) => socket.send(JSON.stringify(frame)),
      // greet sends dmb:connected; fields override the defaults.
      greet: (fields = {}) =>
        conn.send({ event: "dmb:connected", cid: conn.cid, service: "chat", session: `session-${n}`, resumed: false, ...fields }),
      nextFrame: () => frames.next(`a frame on connection ${req.url}`),
      closed: new Promise((resolve) => socket.on("close", (code, reason) => resolve({ code, reason: reason.toString() }))),
    };
    socket.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      frames.push(frame);
      if (this.autoAck && frame.event === "dmb:message" && frame.id !== undefined) {
        conn.send({ event: "dmb:ack", id: frame.id });
      }
    });
    if (this.greet) conn.greet();
    this.connections.push(conn);
  }

  /** close drops every connection and stops listening. */
  async close() {
    for (const s of this.sockets) s.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}

/**
 * connect starts a fake DMB and a DMB client connected to it (with the ws
 * WebSocket), both closed when the test ends, and records the client's
 * events from the start.
 * @param {import("node:test").TestContext} t
 * @param {object} [options] more options for the client
 */
export async function connect(t, options = {}) {
  const server = await FakeDMB.start();
  t.after(() => server.close());
  const client = new DMB({ url: server.url(), WebSocket, ...options });
  t.after(() => client.close());
  const events = record(client);
  return { server, client, events };
}
