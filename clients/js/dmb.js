// dmb.js: the browser (and Node) client of DMB, the Duplex Message Broker.
// One ES module, no dependencies. It speaks the client frames of DMB's wire
// protocol (docs/protocol.md, sections 3 to 7, 10 and 11): it connects to
// /ws/{service}, matches acks, errors and replies (partial ones too) to the
// messages it sent, joins and leaves rooms, hands on room messages, and
// reconnects with backoff after the close codes that allow it, resuming its
// session: the same cid and rooms, the messages it missed, and what it sent
// that was not answered sent again.
//
//   import { DMB } from "/dmb.js";
//   const c = new DMB({ service: "chat" });
//   c.on("broadcast", (data) => console.log(data));
//   await c.send({ text: "hi" });

/** Close codes after which reconnecting cannot help (docs/protocol.md, section 3). */
const FINAL_CODES = new Set([
  4001, // token missing, invalid or expired
  4004, // no backend has ever registered this service
  4009, // kicked by the backend
  4010, // the session was resumed on another connection
]);

/**
 * Close codes after which reconnecting may help but resuming cannot: DMB
 * closed for what the client sent (docs/protocol.md, sections 3 and 11), so
 * the next connection starts a new session and what was pending fails
 * rather than being sent again.
 */
const FRESH_CODES = new Set([
  1003, // a binary frame
  1008, // policy: too many bad frames, over its rate
  1009, // a frame too large
]);

/** How many streams' offsets a client keeps for a resume (docs/protocol.md, section 11). */
const MAX_OFFSETS = 32;

const OPEN = 1; // WebSocket.OPEN, the same in browsers and in ws

/**
 * DMBError is how dmb.js fails a promise or reports an error event.
 * `message` is DMB's error text ("backend unavailable") or dmb.js's own
 * ("not connected", "connection closed", "request timed out"); `code` is
 * the WebSocket close code when a close caused it.
 */
export class DMBError extends Error {
  /**
   * @param {string} message
   * @param {number} [code] close code, when a close caused the error
   */
  constructor(message, code) {
    super(message);
    this.name = "DMBError";
    /** @type {number | undefined} */
    this.code = code;
  }
}

/**
 * DMB is one connection to a DMB service, kept open until close() or a
 * close code after which retrying cannot help (4001, 4004, 4009, 4010).
 * A reconnect resumes the session (docs/protocol.md, section 11): the
 * client keeps, in memory only, DMB's newest session token and the last
 * offset of each stream, and sends again, with the same id, every frame of
 * send(), request(), join() and leave() that DMB had not answered.
 *
 * Events (subscribe with on, unsubscribe with off):
 * - "connected" ({cid, service, resumed, recovered}): DMB accepted the
 *   connection (every reconnect too). resumed: it took up the session of
 *   the connection before (same cid, rooms and backend); recovered: and no
 *   message was missed. When recovered is false (a first connection
 *   included), the app should load its state afresh.
 * - "broadcast" (data): a broadcast of the service's backend.
 * - "direct" (data, replyTo): a message to this client; replyTo is undefined
 *   when the backend gave none. A reply that settles a request() goes to
 *   that request only, and so does a partial one (its onProgress).
 * - "room" (room, data): a message to a room this client is in.
 * - "joined" (room), "left" (room): this client's membership of room
 *   changed, whoever changed it (its backend, or join() and leave()).
 *   A client keeps its rooms across a resumed reconnect and is in none
 *   after one that was not resumed.
 * - "error" (DMBError): a dmb:error that answers none of our pending calls
 *   (a bad frame), or a frame from DMB that is not JSON.
 * - "close" ({code, reason, willRetry}): the socket closed; willRetry tells
 *   whether dmb.js will reconnect.
 * - "status" (status): status changed.
 */
export class DMB {
  /**
   * @param {object} options
   * @param {string} [options.service] service to connect to; required unless url is given
   * @param {string} [options.token] JWT, sent as ?token= (DMB auth)
   * @param {string} [options.url] WebSocket URL; default ws(s)://{location.host}/ws/{service}
   * @param {Function} [options.WebSocket] WebSocket constructor; default globalThis.WebSocket
   * @param {{initial?: number, max?: number}} [options.backoff] reconnect delays in ms (500, 30000)
   * @param {number} [options.requestTimeout] default timeout of request() in ms (10000)
   * @param {() => number} [options.random] source of jitter in [0, 1); default Math.random
   * @param {Function} [options.setTimeout] timer functions (for tests); default the global ones
   * @param {Function} [options.clearTimeout]
   */
  constructor(options = {}) {
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("DMB: no WebSocket constructor; pass options.WebSocket");
    }
    this._url = buildURL(options);
    this._initial = options.backoff?.initial ?? 500;
    this._max = options.backoff?.max ?? 30000;
    this._requestTimeout = options.requestTimeout ?? 10000;
    this._random = options.random ?? Math.random;
    this._setTimeout = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? ((t) => clearTimeout(t));

    this._listeners = new Map(); // event name -> Set of functions
    this._pending = new Map(); // message id -> {frame, acked, resolve, reject, request, onProgress, timer}
    this._session = null; // the newest session token DMB gave, for a resume
    this._offsets = new Map(); // stream -> its last offset, least recently updated first
    this._dropCode = 0; // the close code of the connection lost last
    this._nextId = 0;
    this._attempt = 0; // failed connections since the last successful one
    this._retryTimer = null;
    this._stopped = false;
    this._ws = null;

    /** @type {"connecting" | "open" | "reconnecting" | "closed"} */
    this.status = "connecting";
    /** @type {string | null} the cid of the current connection; null while not open */
    this.cid = null;

    this._connect();
  }

  /**
   * on adds fn as a listener of event.
   * @param {string} event
   * @param {Function} fn
   * @returns {this}
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  /**
   * off removes fn as a listener of event.
   * @param {string} event
   * @param {Function} fn
   * @returns {this}
   */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  /**
   * send sends data to the service's backend as a dmb:message. It resolves
   * when DMB acknowledges that a live backend received it, and rejects with
   * DMB's error ("backend unavailable", "broker unavailable"), with "not
   * connected" when the connection is not open (nothing is queued), or with
   * "connection closed" when it closes for good (or with 1003, 1008, 1009)
   * before the answer. After any other close it waits: the frame is sent
   * again, with the same id, on the next connection.
   * @param {any} data any JSON value
   * @returns {Promise<void>}
   */
  send(data) {
    return this._call({ event: "dmb:message", data }, false, 0);
  }

  /**
   * request sends data like send, and resolves with the data of the
   * dmb:direct whose reply_to is this message's id (the ack alone does not
   * resolve it). A dmb:direct with that reply_to and "more": true is a
   * partial answer: its data goes to options.onProgress (when given), and
   * the request waits on for the final one. It rejects like send, and with
   * "request timed out" when the final answer has not come within the
   * timeout (default options.requestTimeout), partial answers or not. A
   * request DMB acked waits across a reconnect for its reply when the
   * session is resumed, and rejects with "connection closed" when not.
   * @param {any} data any JSON value
   * @param {{timeout?: number, onProgress?: (data: any) => void}} [options]
   * @returns {Promise<any>}
   */
  request(data, options = {}) {
    return this._call({ event: "dmb:message", data }, true, options.timeout ?? this._requestTimeout, options.onProgress);
  }

  /**
   * join asks DMB to put this client in room (a dmb:join). It resolves on
   * DMB's ack, after the "joined" event when the membership changed, and
   * rejects with DMB's error ("not allowed" when the client's token does
   * not allow the room, "invalid room name", "too many rooms"), and like
   * send when not connected or when the connection closes first. Clients
   * may join by themselves only with auth on and rooms in their token;
   * otherwise their backend joins them.
   * @param {string} room
   * @returns {Promise<void>}
   */
  join(room) {
    return this._call({ event: "dmb:join", room }, false, 0);
  }

  /**
   * leave asks DMB to take this client out of room (a dmb:leave); it
   * settles like join, after the "left" event when the membership changed.
   * @param {string} room
   * @returns {Promise<void>}
   */
  leave(room) {
    return this._call({ event: "dmb:leave", room }, false, 0);
  }

  /**
   * close closes the connection for good: no reconnect follows, pending
   * calls reject, and status becomes "closed".
   */
  close() {
    if (this._stopped) return;
    this._stopped = true;
    if (this._retryTimer !== null) {
      this._clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
    this._failPending(new DMBError("connection closed"));
    this.cid = null;
    this._setStatus("closed");
    if (this._ws) {
      // The socket's close event reports the code, with willRetry false.
      this._ws.close(1000, "closed by client");
    } else {
      // Waiting to reconnect: there is no socket left to report the close.
      this._emit("close", { code: 1000, reason: "closed by client", willRetry: false });
    }
  }

  _call(frame, request, timeout, onProgress) {
    return new Promise((resolve, reject) => {
      if (this.status !== "open" || !this._ws || this._ws.readyState !== OPEN) {
        reject(new DMBError("not connected"));
        return;
      }
      const id = this._nextId + 1;
      let text;
      try {
        // JSON.stringify throws on data that is not JSON (a BigInt, a cycle).
        text = JSON.stringify({ ...frame, id });
        this._ws.send(text);
      } catch (err) {
        reject(new DMBError("send failed: " + (err?.message ?? err)));
        return;
      }
      this._nextId = id;
      const call = { frame: text, acked: false, resolve, reject, request, onProgress, timer: null };
      if (request) {
        call.timer = this._setTimeout(() => {
          this._pending.delete(id);
          reject(new DMBError("request timed out"));
        }, timeout);
      }
      this._pending.set(id, call);
    });
  }

  _settle(id, err, value) {
    const call = this._pending.get(id);
    if (!call) return false;
    this._pending.delete(id);
    if (call.timer !== null) this._clearTimeout(call.timer);
    if (err) call.reject(err);
    else call.resolve(value);
    return true;
  }

  _failPending(err) {
    for (const id of [...this._pending.keys()]) this._settle(id, err);
  }

  _connect() {
    const ws = new this._WebSocket(this._resumeURL());
    this._ws = ws;
    // Every failure ends in a close event, which does the work; an error
    // event without a listener would throw in Node's ws.
    ws.onerror = () => {};
    ws.onmessage = (ev) => {
      // After close(), frames still in flight are not for the app.
      if (!this._stopped) this._onFrame(ev.data);
    };
    ws.onclose = (ev) => this._onClose(ev.code, ev.reason);
  }

  _onFrame(raw) {
    let f;
    try {
      f = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch {
      f = null;
    }
    if (!f || typeof f !== "object" || Array.isArray(f)) {
      this._emit("error", new DMBError("frame from DMB is not a JSON object"));
      return;
    }
    if (typeof f.offset === "string") this._keepOffset(f.offset);
    switch (f.event) {
      case "dmb:connected":
        this._onConnected(f);
        break;
      case "dmb:session":
        if (typeof f.session === "string") this._session = f.session;
        break;
      case "dmb:ack": {
        // A request waits for its reply, not for the ack.
        const call = this._pending.get(f.id);
        if (call && !call.request) this._settle(f.id, null, undefined);
        else if (call) call.acked = true;
        break;
      }
      case "dmb:error":
        if (f.id === undefined || f.id === null || !this._settle(f.id, new DMBError(f.error))) {
          this._emit("error", new DMBError(f.error));
        }
        break;
      case "dmb:broadcast":
        this._emit("broadcast", f.data);
        break;
      case "dmb:direct": {
        // A reply goes to the request() that waits for it, and only there;
        // a partial one ("more") to its onProgress, leaving it pending.
        const call = f.reply_to === undefined ? undefined : this._pending.get(f.reply_to);
        if (call?.request) {
          if (f.more === true) {
            if (typeof call.onProgress === "function") this._callListener(call.onProgress, [f.data]);
          } else {
            this._settle(f.reply_to, null, f.data);
          }
        } else {
          this._emit("direct", f.data, f.reply_to);
        }
        break;
      }
      case "dmb:room":
        this._emit("room", f.room, f.data);
        break;
      case "dmb:joined":
        this._emit("joined", f.room);
        break;
      case "dmb:left":
        this._emit("left", f.room);
        break;
      default:
        // Unknown events are ignored, for forward compatibility.
    }
  }

  _onConnected(f) {
    const resumed = f.resumed === true;
    this._attempt = 0;
    this.cid = f.cid;
    this._session = typeof f.session === "string" ? f.session : null;
    if (!resumed) {
      // A new session: its streams start now, and the replies to requests
      // DMB acked went to the session that ended.
      this._offsets.clear();
      for (const [id, call] of [...this._pending]) {
        if (call.acked) this._settle(id, new DMBError("connection closed", this._dropCode));
      }
    }
    // What DMB did not answer goes again, in the order sent and before
    // anything the app sends once it learns the connection is open.
    for (const call of this._pending.values()) {
      if (!call.acked) this._ws.send(call.frame);
    }
    this._setStatus("open");
    this._emit("connected", { cid: f.cid, service: f.service, resumed, recovered: resumed && f.recovered === true });
  }

  // _keepOffset remembers offset as the last of its stream, the text
  // before its first ":", dropping the stream updated least recently when
  // more than MAX_OFFSETS are kept.
  _keepOffset(offset) {
    const colon = offset.indexOf(":");
    if (colon < 0) return;
    const stream = offset.slice(0, colon);
    this._offsets.delete(stream); // a Map keeps insertion order: move it last
    this._offsets.set(stream, offset);
    if (this._offsets.size > MAX_OFFSETS) this._offsets.delete(this._offsets.keys().next().value);
  }

  // _resumeURL is the URL to connect to: with the session token and the
  // offsets to resume from, once DMB gave a token.
  _resumeURL() {
    if (this._session === null) return this._url;
    let url = this._url + (this._url.includes("?") ? "&" : "?") + "resume=" + encodeURIComponent(this._session);
    if (this._offsets.size > 0) url += "&offset=" + [...this._offsets.values()].map(encodeURIComponent).join(",");
    return url;
  }

  _onClose(code, reason) {
    this._ws = null;
    this.cid = null;
    this._dropCode = code;
    if (this._stopped) {
      // close() has failed what was pending.
      this._emit("close", { code, reason, willRetry: false });
      return;
    }
    if (FINAL_CODES.has(code) || FRESH_CODES.has(code)) {
      // The session cannot come back: what was pending fails, and a
      // reconnect starts a new session.
      this._failPending(new DMBError("connection closed", code));
      this._session = null;
      this._offsets.clear();
    }
    if (FINAL_CODES.has(code)) {
      this._stopped = true;
      this._setStatus("closed");
      this._emit("close", { code, reason, willRetry: false });
      return;
    }
    // Full jitter: a random delay up to the exponential cap, so that
    // clients dropped together (1001 from a node shutting down) do not come
    // back together.
    const cap = Math.min(this._max, this._initial * 2 ** this._attempt);
    const delay = Math.floor(this._random() * cap);
    this._attempt++;
    this._setStatus("reconnecting");
    this._emit("close", { code, reason, willRetry: true });
    if (this._stopped) return; // a close listener called close()
    this._retryTimer = this._setTimeout(() => {
      this._retryTimer = null;
      if (!this._stopped) this._connect();
    }, delay);
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit("status", status);
  }

  _emit(event, ...args) {
    const fns = this._listeners.get(event);
    if (!fns) return;
    for (const fn of [...fns]) this._callListener(fn, args);
  }

  _callListener(fn, args) {
    try {
      fn(...args);
    } catch (err) {
      // A listener's bug must not break the connection's bookkeeping;
      // report it the way an uncaught error would be.
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}

// buildURL returns the WebSocket URL of options, with the token in the query.
function buildURL({ url, service, token }) {
  if (!url) {
    if (!service) throw new TypeError("DMB: options.service or options.url is required");
    if (typeof location === "undefined") throw new TypeError("DMB: options.url is required outside a browser");
    url = (location.protocol === "https:" ? "wss" : "ws") + "://" + location.host + "/ws/" + encodeURIComponent(service);
  }
  if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  return url;
}
