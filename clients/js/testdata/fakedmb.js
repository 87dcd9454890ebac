// A fake DMB node for dmb.js's tests: an HTTP server on a free loopback
// port that speaks the client frames of docs/protocol.md (sections 3 to 5
// and 10 to 12) on WebSockets (ws) and on the HTTP fallback (an event
// stream down, POSTs up), driven step by step by the test. It lives outside
// test/ because `node --test test/` runs every .js file under a directory
// named test.

import http from "node:http";

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
 * FakeDMB is the server side. Each connection, a WebSocket at /ws/chat or
 * an event stream at /sse/chat, greets the client with dmb:connected, cid
 * "cid-1", "cid-2", ..., session "session-1", "session-2", ... and resumed
 * false, unless greet is turned off (then the test greets with conn.greet),
 * and acks every dmb:message that has an id unless autoAck is off. A test
 * takes connections with nextConnection() and each connection's frames with
 * conn.nextFrame(); conn.query is the connection's URL query, decoded, and
 * conn.transport "websocket" or "sse". With refuseWebSocket on, every
 * WebSocket fails before it opens, as where a proxy lets none through.
 */
export class FakeDMB {
  /** start listens on 127.0.0.1 on a free port. */
  static async start() {
    const s = new FakeDMB();
    s.http = http.createServer((req, res) => s._serveHTTP(req, res));
    s.wss = new WebSocketServer({ noServer: true });
    s.http.on("upgrade", (req, socket, head) => {
      if (s.refuseWebSocket) {
        socket.destroy();
        return;
      }
      s.wss.handleUpgrade(req, socket, head, (ws) => s._accept(ws, req));
    });
    await deadline(new Promise((resolve, reject) => {
      s.http.once("error", reject);
      s.http.listen(0, "127.0.0.1", resolve);
    }), "the fake DMB to listen");
    return s;
  }

  constructor() {
    this.greet = true;
    this.autoAck = true;
    this.refuseWebSocket = false;
    this.count = 0; // connections accepted
    this.connections = new Queue();
    this.sockets = new Set();
    this.streams = new Map(); // POST key -> the event stream's connection
    this.postGate = null; // a promise that POSTs wait for before their answer
  }

  /** url returns the address of path on this server. */
  url(path = "/ws/chat") {
    return `ws://127.0.0.1:${this.http.address().port}${path}`;
  }

  /** nextConnection resolves with the next connection: {transport, url, query, cid, nextFrame, send, greet, end, drop, closed}. */
  nextConnection() {
    return this.connections.next("a connection to the fake DMB");
  }

  /** holdPosts makes POSTs wait for their answer until the function it returns is called. */
  holdPosts() {
    let release;
    this.postGate = new Promise((resolve) => (release = resolve));
    return () => {
      this.postGate = null;
      release();
    };
  }

  // _conn makes the connection n, sending with sendText; its frames come
  // to receive.
  _conn(transport, url, sendText) {
    const n = ++this.count;
    const frames = new Queue();
    const conn = {
      transport,
      url,
      query: new URL(url, "http://fake").searchParams,
      cid: `cid-${n}`,
      // wsURL is url as on a WebSocket: /ws/ for /sse/.
      wsURL: url.replace(/^\/sse\//, "/ws/"),
      send: (frame) => sendText(JSON.stringify(frame)),
      sendRaw: sendText,
      // greet sends dmb:connected; fields override the defaults.
      greet: (fields = {}) =>
        conn.send({ event: "dmb:connected", cid: conn.cid, service: "chat", session: `session-${n}`, resumed: false, ...fields }),
      nextFrame: () => frames.next(`a frame on connection ${url}`),
      receive: (raw) => {
        const frame = JSON.parse(raw);
        frames.push(frame);
        if (this.autoAck && frame.event === "dmb:message" && frame.id !== undefined) {
          conn.send({ event: "dmb:ack", id: frame.id });
        }
      },
    };
    return conn;
  }

  _accept(socket, req) {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    const conn = this._conn("websocket", req.url, (text) => socket.send(text));
    conn.socket = socket;
    conn.closed = new Promise((resolve) => socket.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    // end closes with code (1006: drops the connection instead).
    conn.end = (code, reason) => (code === 1006 ? socket.terminate() : socket.close(code, reason));
    conn.drop = () => socket.terminate();
    socket.on("message", (raw) => conn.receive(raw.toString()));
    if (this.greet) conn.greet();
    this.connections.push(conn);
  }

  _serveHTTP(req, res) {
    const path = new URL(req.url, "http://fake").pathname;
    if (req.method === "GET" && /^\/sse\/[^/]+$/.test(path)) {
      this._acceptStream(req, res, path);
    } else if (req.method === "POST" && /^\/sse\/[^/]+\/[^/]+$/.test(path)) {
      this._acceptPost(req, res, path.slice(path.lastIndexOf("/") + 1));
    } else {
      res.writeHead(404).end();
    }
  }

  // _acceptStream is the fallback's GET: a post event, then frames as
  // events. conn.end(code, reason) ends it with dmb:close, conn.drop()
  // without; conn.posts lists the bodies POSTed to it.
  _acceptStream(req, res, path) {
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-store" });
    const event = (name, data) => res.write((name ? `event: ${name}\n` : "") + `data: ${data}\n\n`);
    const conn = this._conn("sse", req.url, (text) => event("", text));
    const key = `key-${this.count}`;
    conn.posts = [];
    conn.ended = false;
    conn.closed = new Promise((resolve) => res.on("close", () => resolve({})));
    res.on("close", () => {
      conn.ended = true;
      this.streams.delete(key);
      this.sockets.delete(res);
    });
    conn.end = (code, reason) => {
      if (code === 1006) return conn.drop();
      conn.send({ event: "dmb:close", code, reason });
      res.end();
    };
    conn.drop = () => res.destroy();
    res.terminate = conn.drop;
    this.sockets.add(res);
    this.streams.set(key, conn);
    event("post", `${path}/${key}`);
    if (this.greet) conn.greet();
    this.connections.push(conn);
  }

  async _acceptPost(req, res, key) {
    let body = "";
    req.setEncoding("utf8");
    for await (const chunk of req) body += chunk;
    const conn = this.streams.get(key);
    if (!conn || conn.ended) {
      res.writeHead(404).end();
      return;
    }
    conn.posts.push({ body, contentType: req.headers["content-type"] });
    for (const line of body.split("\n")) if (line.trim() !== "") conn.receive(line);
    if (this.postGate) await this.postGate;
    res.writeHead(204).end();
  }

  /** close drops every connection and stops listening. */
  async close() {
    for (const s of this.sockets) s.terminate();
    this.http.closeAllConnections?.();
    await new Promise((resolve) => this.http.close(resolve));
  }
}

/**
 * eventSource returns an EventSource for Node (which has none before 22):
 * enough of the browser's for dmb.js, reconnecting by itself after an
 * error as a browser's does unless closed. instances lists those made.
 */
export function eventSource() {
  const instances = [];
  class NodeEventSource {
    constructor(url) {
      this.url = url;
      this.closed = false;
      this.onopen = this.onmessage = this.onerror = null;
      this.listeners = new Map();
      instances.push(this);
      this._open();
    }

    addEventListener(name, fn) {
      if (!this.listeners.has(name)) this.listeners.set(name, []);
      this.listeners.get(name).push(fn);
    }

    close() {
      this.closed = true;
      this.req?.destroy();
    }

    _open() {
      let failed = false;
      const fail = () => {
        if (failed || this.closed) return;
        failed = true;
        this.onerror?.({ type: "error" });
        // A browser's EventSource tries again, without resume.
        setTimeout(() => this.closed || this._open(), 10);
      };
      this.req = http.get(this.url, { headers: { Accept: "text/event-stream" } }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          fail();
          return;
        }
        this.onopen?.({ type: "open" });
        let buf = "";
        let name = "";
        let data = [];
        res.setEncoding("utf8");
        res.on("data", (chunk) => {
          buf += chunk;
          for (let i; (i = buf.indexOf("\n")) >= 0; ) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line === "") {
              if (data.length > 0) this._dispatch(name || "message", data.join("\n"));
              name = "";
              data = [];
            } else if (line.startsWith("event:")) {
              name = line.slice(6).trim();
            } else if (line.startsWith("data:")) {
              data.push(line.slice(5).replace(/^ /, ""));
            }
          }
        });
        res.on("end", fail);
        res.on("error", fail);
      });
      this.req.on("error", fail);
    }

    _dispatch(type, data) {
      if (this.closed) return;
      const ev = { type, data };
      if (type === "message") this.onmessage?.(ev);
      for (const fn of this.listeners.get(type) ?? []) fn(ev);
    }
  }
  return { EventSource: NodeEventSource, instances };
}

/**
 * The transport the tests of the client's behaviour run on: the
 * environment's DMB_TEST_TRANSPORT, "websocket" or "sse" (fallback.test.js
 * runs them all again on "sse"); unset, "auto" with a WebSocket that opens.
 */
export const testTransport = process.env.DMB_TEST_TRANSPORT || "auto";

/** onSSE tells whether the tests run on the HTTP fallback. */
export const onSSE = testTransport === "sse";

/** clientOptions are the options of a client of the tests: both transports, testTransport. */
export function clientOptions() {
  return { WebSocket, EventSource: eventSource().EventSource, transport: testTransport };
}

/**
 * connect starts a fake DMB and a DMB client connected to it (with the ws
 * WebSocket and eventSource's EventSource, on testTransport), both closed
 * when the test ends, and records the client's events from the start.
 * @param {import("node:test").TestContext} t
 * @param {object} [options] more options for the client
 */
export async function connect(t, options = {}) {
  const server = await FakeDMB.start();
  t.after(() => server.close());
  const client = new DMB({ url: server.url(), ...clientOptions(), ...options });
  t.after(() => client.close());
  const events = record(client);
  return { server, client, events };
}
