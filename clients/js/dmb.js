// dmb.js: the browser (and Node) client of DMB, the Duplex Message Broker.
// One ES module, no dependencies. It speaks the client frames of DMB's wire
// protocol (docs/protocol.md, sections 3 to 7 and 10 to 12): it connects to
// /ws/{service}, or, where no WebSocket gets through, to the HTTP fallback
// (an event stream from /sse/{service} down, POSTs up), matches acks,
// errors and replies (partial ones too) to the messages it sent, joins and
// leaves rooms, hands on room messages, and reconnects with backoff after
// the close codes that allow it, resuming its session: the same cid and
// rooms, the messages it missed, and what it sent that was not answered
// sent again.
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

/** The values of options.transport. */
const TRANSPORT_OPTIONS = new Set(["auto", "websocket", "sse"]);

/**
 * How many connections in a row of one transport may fail before they
 * open until "auto" tries the other one.
 */
const FALLBACK_AFTER = 2;

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
 * - "connected" ({cid, service, resumed, recovered, transport}): DMB
 *   accepted the connection (every reconnect too). resumed: it took up the
 *   session of the connection before (same cid, rooms and backend);
 *   recovered: and no message was missed. When recovered is false (a first
 *   connection included), the app should load its state afresh. transport:
 *   "websocket", or "sse" on the HTTP fallback.
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
 * - "close" ({code, reason, willRetry}): the connection closed (on the
 *   fallback: its stream ended with dmb:close, or dropped, 1006); willRetry
 *   tells whether dmb.js will reconnect.
 * - "status" (status): status changed.
 */
export class DMB {
  /**
   * @param {object} options
   * @param {string} [options.service] service to connect to; required unless url is given
   * @param {string} [options.token] JWT, sent as ?token= (DMB auth)
   * @param {string} [options.url] WebSocket URL; default ws(s)://{location.host}/ws/{service}
   * @param {"auto" | "websocket" | "sse"} [options.transport] "auto" (the default): a
   *   WebSocket, and the HTTP fallback when WebSockets do not open; or only one of them
   * @param {string} [options.sseUrl] the fallback's stream URL; default url with
   *   http(s) for ws(s) and /sse/{service} for /ws/{service}
   * @param {Function} [options.WebSocket] WebSocket constructor; default globalThis.WebSocket
   * @param {Function} [options.EventSource] EventSource constructor; default globalThis.EventSource
   * @param {Function} [options.fetch] fetch, for the fallback's POSTs; default globalThis.fetch
   * @param {{initial?: number, max?: number}} [options.backoff] reconnect delays in ms (500, 30000)
   * @param {number} [options.requestTimeout] default timeout of request() in ms (10000)
   * @param {() => number} [options.random] source of jitter in [0, 1); default Math.random
   * @param {Function} [options.setTimeout] timer functions (for tests); default the global ones
   * @param {Function} [options.clearTimeout]
   */
  constructor(options = {}) {
    const mode = options.transport ?? "auto";
    if (!TRANSPORT_OPTIONS.has(mode)) {
      throw new TypeError(`DMB: options.transport must be "auto", "websocket" or "sse", not ${JSON.stringify(mode)}`);
    }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._EventSource = options.EventSource ?? globalThis.EventSource;
    const fetchFn = options.fetch ?? globalThis.fetch;
    // Called as a method of this, the browser's fetch would throw.
    this._fetch = typeof fetchFn === "function" ? (...args) => fetchFn(...args) : null;
    const hasWS = typeof this._WebSocket === "function";
    const hasSSE = typeof this._EventSource === "function" && this._fetch !== null;
    if (mode === "websocket" || (mode === "auto" && !hasWS && !hasSSE)) {
      if (!hasWS) throw new TypeError("DMB: no WebSocket constructor; pass options.WebSocket");
    }
    if (mode === "sse" && !hasSSE) {
      throw new TypeError("DMB: no EventSource constructor or fetch; pass options.EventSource and options.fetch");
    }
    this._url = buildURL(options);
    this._sseURL = options.sseUrl ? withToken(options.sseUrl, options.token) : sseURLOf(this._url);
    if (mode === "sse" && this._sseURL === null) {
      throw new TypeError("DMB: cannot make the event stream's URL of " + this._url + "; pass options.sseUrl");
    }
    /** The transports to try, the preferred first. */
    this._transports = [];
    if (hasWS && mode !== "sse") this._transports.push("websocket");
    if (hasSSE && this._sseURL !== null && mode !== "websocket") this._transports.push("sse");
    this._failedOpens = 0; // connections in a row of this.transport that failed before they opened
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
    this._t = null; // the current connection's transport

    /** @type {"connecting" | "open" | "reconnecting" | "closed"} */
    this.status = "connecting";
    /** @type {string | null} the cid of the current connection; null while not open */
    this.cid = null;
    /**
     * The transport of the current connection, or of the next one while
     * reconnecting.
     * @type {"websocket" | "sse"}
     */
    this.transport = this._transports[0];

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
    if (this._t) {
      // The transport's close reports the code, with willRetry false.
      this._t.close(1000, "closed by client");
    } else {
      // Waiting to reconnect: there is no socket left to report the close.
      this._emit("close", { code: 1000, reason: "closed by client", willRetry: false });
    }
  }

  _call(frame, request, timeout, onProgress) {
    return new Promise((resolve, reject) => {
      if (this.status !== "open" || !this._t || !this._t.open) {
        reject(new DMBError("not connected"));
        return;
      }
      const id = this._nextId + 1;
      let text;
      try {
        // JSON.stringify throws on data that is not JSON (a BigInt, a cycle).
        text = JSON.stringify({ ...frame, id });
        this._t.send(text);
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
    const t =
      this.transport === "sse"
        ? new SSETransport(this._resumeURL(this._sseURL), this._EventSource, this._fetch)
        : new WSTransport(this._resumeURL(this._url), this._WebSocket);
    this._t = t;
    t.onframe = (raw) => {
      // After close(), frames still in flight are not for the app.
      if (!this._stopped && this._t === t) this._onFrame(raw);
    };
    t.onclose = (code, reason, opened) => {
      if (this._t === t) this._onClose(code, reason, opened);
    };
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
      if (!call.acked) this._t.send(call.frame);
    }
    this._setStatus("open");
    this._emit("connected", {
      cid: f.cid,
      service: f.service,
      resumed,
      recovered: resumed && f.recovered === true,
      transport: this.transport,
    });
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

  // _resumeURL is the URL to connect to, base (the WebSocket's or the event
  // stream's): with the session token and the offsets to resume from, once
  // DMB gave a token.
  _resumeURL(base) {
    if (this._session === null) return base;
    let url = base + (base.includes("?") ? "&" : "?") + "resume=" + encodeURIComponent(this._session);
    if (this._offsets.size > 0) url += "&offset=" + [...this._offsets.values()].map(encodeURIComponent).join(",");
    return url;
  }

  _onClose(code, reason, opened) {
    this._t = null;
    this.cid = null;
    this._dropCode = code;
    if (opened) {
      this._failedOpens = 0;
    } else if (!this._stopped && ++this._failedOpens >= FALLBACK_AFTER && this._transports.length > 1) {
      // This transport does not get through (or DMB is down): try the
      // other one, and keep to whichever opens.
      this._failedOpens = 0;
      this.transport = this._transports.find((t) => t !== this.transport);
    }
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
  return withToken(url, token);
}

function withToken(url, token) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}

// sseURLOf returns the event stream's URL of a WebSocket URL: http(s) for
// ws(s), /sse/{service} for /ws/{service}, the same query; null when url
// is not of that form.
function sseURLOf(url) {
  const m = /^ws(s?):\/\/([^/?#]+)((?:\/[^?#]*)?)\/ws\/([^/?#]+)(\?[^#]*)?$/.exec(url);
  if (!m) return null;
  return "http" + m[1] + "://" + m[2] + m[3] + "/sse/" + m[4] + (m[5] ?? "");
}

/**
 * A transport carries one connection's frames: send(text) a frame, close(code,
 * reason); `open` tells whether send may be called. It calls onframe(text)
 * with each frame from DMB and, once, onclose(code, reason, opened), opened
 * telling whether the connection got as far as opening.
 */

// WSTransport is a WebSocket.
class WSTransport {
  constructor(url, WebSocket) {
    this.onframe = () => {};
    this.onclose = () => {};
    this._opened = false;
    const ws = new WebSocket(url);
    this._ws = ws;
    ws.onopen = () => {
      this._opened = true;
    };
    // Every failure ends in a close event, which does the work; an error
    // event without a listener would throw in Node's ws.
    ws.onerror = () => {};
    ws.onmessage = (ev) => {
      this._opened = true;
      this.onframe(ev.data);
    };
    ws.onclose = (ev) => this.onclose(ev.code, ev.reason, this._opened);
  }

  get open() {
    return this._ws.readyState === OPEN;
  }

  send(text) {
    this._ws.send(text);
  }

  close(code, reason) {
    this._ws.close(code, reason);
  }
}

// SSETransport is the HTTP fallback (docs/protocol.md, section 12): an
// EventSource whose first event, "post", names where to POST frames, and
// whose other events are DMB's frames, the last one dmb:close. Frames to
// send wait in a queue, and go in one POST, one per line, when no POST is
// in flight, so that DMB reads them in order.
class SSETransport {
  constructor(url, EventSource, fetch) {
    this.onframe = () => {};
    this.onclose = () => {};
    this._fetch = fetch;
    this._opened = false; // an event came
    this._ended = false;
    this._postURL = null;
    this._queue = [];
    this._posting = false;
    const es = new EventSource(url);
    this._es = es;
    es.addEventListener("post", (ev) => {
      if (this._ended) return;
      this._opened = true;
      // A path on the stream's origin (url may be relative to the page).
      const base = typeof location === "undefined" ? url : new URL(url, location.href);
      this._postURL = new URL(ev.data, base).href;
      this._post();
    });
    es.onmessage = (ev) => {
      if (this._ended) return;
      this._opened = true;
      const data = String(ev.data);
      if (data.includes('"dmb:close"')) {
        let f = null;
        try {
          f = JSON.parse(data);
        } catch {
          // not dmb:close then: a frame the client reports
        }
        if (f?.event === "dmb:close") {
          // As a WebSocket's close frame.
          this._end(typeof f.code === "number" ? f.code : 1005, typeof f.reason === "string" ? f.reason : "");
          return;
        }
      }
      this.onframe(data);
    };
    // An EventSource reconnects by itself, without resume: close it, and
    // let the client reconnect as after a WebSocket's drop.
    es.onerror = () => this._end(1006, "");
  }

  get open() {
    return !this._ended && this._postURL !== null;
  }

  send(text) {
    if (this._ended) throw new Error("the event stream ended");
    this._queue.push(text);
    this._post();
  }

  close(code, reason) {
    if (this._ended) return;
    this._ended = true;
    this._es.close();
    this._queue = [];
    // As a WebSocket reports its close, later.
    queueMicrotask(() => this.onclose(code, reason, this._opened));
  }

  _end(code, reason) {
    if (this._ended) return;
    this._ended = true;
    this._es.close();
    this._queue = [];
    this.onclose(code, reason, this._opened);
  }

  // _post sends what is queued in one POST, unless one is in flight.
  _post() {
    if (this._posting || this._ended || this._postURL === null || this._queue.length === 0) return;
    const body = this._queue.join("\n");
    this._queue = [];
    this._posting = true;
    this._fetch(this._postURL, { method: "POST", headers: { "Content-Type": "application/json" }, body }).then(
      (res) => {
        this._posting = false;
        res.body?.cancel?.().catch(() => {});
        // 404: the stream is gone. Either way the connection is lost,
        // and what DMB did not answer goes again on the next one.
        if (!res.ok) this._end(1006, "POST answered " + res.status);
        else this._post();
      },
      () => {
        this._posting = false;
        this._end(1006, "POST failed");
      },
    );
  }
}
