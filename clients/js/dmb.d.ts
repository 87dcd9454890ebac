// Type declarations of dmb.js, the client of DMB, the Duplex Message Broker.

/** Where a DMB connection stands. */
export type DMBStatus = "connecting" | "open" | "reconnecting" | "closed";

/**
 * How a connection reaches DMB: a WebSocket, or the HTTP fallback ("sse":
 * an event stream down, POSTs up; docs/protocol.md, section 12).
 */
export type DMBTransport = "websocket" | "sse";

/** What the backend puts in reply_to, echoed from a message's id. */
export type MessageID = string | number;

/**
 * The part of the WebSocket interface that dmb.js uses. dmb.js sets the
 * handlers; their events are typed any so that both the DOM's WebSocket and
 * Node's ws fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  /** dmb.js reads ev.data, a string. */
  onmessage: ((ev: any) => void) | null;
  /** dmb.js reads ev.code and ev.reason. */
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor: the browser's, or Node's ws package. */
export type WebSocketConstructorLike = new (url: string) => WebSocketLike;

/** The part of the EventSource interface that dmb.js uses (the fallback's stream). */
export interface EventSourceLike {
  /** dmb.js listens to "post", the stream's first event; it reads ev.data. */
  addEventListener(type: string, listener: (ev: any) => void): void;
  onmessage: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  close(): void;
}

/** An EventSource constructor: the browser's, or one for Node. */
export type EventSourceConstructorLike = new (url: string) => EventSourceLike;

/** The part of fetch that dmb.js uses: POSTs of the fallback. */
export type FetchLike = (
  url: string,
  init: { method: "POST"; headers: Record<string, string>; body: string },
) => Promise<{ ok: boolean; status: number; body?: any }>;

export interface DMBOptions {
  /** The service to connect to; required unless url is given. */
  service?: string;
  /** A JWT, sent as ?token= when DMB auth is on. */
  token?: string;
  /** The WebSocket URL; default ws(s)://{location.host}/ws/{service}. */
  url?: string;
  /**
   * "auto" (default): a WebSocket, and the HTTP fallback when two in a row
   * fail before they open, or at once where there is no WebSocket; back to
   * WebSockets when the fallback fails twice before it opens. Or only one.
   */
  transport?: "auto" | DMBTransport;
  /**
   * The fallback's stream URL; default url with http(s) for ws(s) and
   * /sse/{service} for /ws/{service} (the token is added to either).
   */
  sseUrl?: string;
  /** The WebSocket constructor; default globalThis.WebSocket. */
  WebSocket?: WebSocketConstructorLike;
  /** The EventSource constructor of the fallback; default globalThis.EventSource. */
  EventSource?: EventSourceConstructorLike;
  /** fetch, for the fallback's POSTs; default globalThis.fetch. */
  fetch?: FetchLike;
  /** Reconnect delays in milliseconds: initial 500, max 30000. */
  backoff?: { initial?: number; max?: number };
  /** Default timeout of request() in milliseconds: 10000. */
  requestTimeout?: number;
  /** Source of reconnect jitter in [0, 1); default Math.random. */
  random?: () => number;
  /** Timer functions, for tests; default the global ones. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: any) => void;
}

export interface ConnectedInfo {
  cid: string;
  service: string;
  /**
   * Whether this connection took up the session of the one before (same
   * cid, rooms and backend). False on a first connection, and when DMB
   * could not resume: the client is then a new one, in no room.
   */
  resumed: boolean;
  /**
   * Whether, resumed, the client got every recoverable message it missed.
   * When false (a first connection included), load the app's state afresh.
   */
  recovered: boolean;
  /** How this connection reaches DMB. */
  transport: DMBTransport;
}

export interface CloseInfo {
  /**
   * The close code (docs/protocol.md, section 3): a WebSocket's, or the
   * fallback's dmb:close; 1006 when the connection dropped.
   */
  code: number;
  reason: string;
  /** Whether dmb.js will reconnect. */
  willRetry: boolean;
}

export interface DMBEvents {
  /** DMB accepted the connection: the first one, and every reconnect. */
  connected: (info: ConnectedInfo) => void;
  broadcast: (data: any) => void;
  /** A direct message; a reply (final or partial) to a pending request() is not one. */
  direct: (data: any, replyTo: MessageID | undefined) => void;
  /** A message to a room this client is in. */
  room: (room: string, data: any) => void;
  /** This client joined room, whoever joined it. */
  joined: (room: string) => void;
  /** This client left room, whoever took it out. */
  left: (room: string) => void;
  error: (err: DMBError) => void;
  close: (info: CloseInfo) => void;
  status: (status: DMBStatus) => void;
}

export interface RequestOptions<P = any> {
  /** Milliseconds until the final reply; default DMBOptions.requestTimeout. */
  timeout?: number;
  /** Called with the data of each partial reply ("more": true), in order. */
  onProgress?: (data: P) => void;
}

/** The error of a failed send(), request(), join() or leave(), and of the "error" event. */
export class DMBError extends Error {
  constructor(message: string, code?: number);
  readonly name: "DMBError";
  /** The close code, when a close caused the error. */
  readonly code: number | undefined;
}

/**
 * One connection to a DMB service, reconnecting until close(). A reconnect
 * resumes the session (docs/protocol.md, section 11) and sends again, with
 * the same id, what DMB had not answered.
 */
export class DMB {
  constructor(options: DMBOptions);
  /** Where the connection stands. */
  readonly status: DMBStatus;
  /** The cid of the current connection; null while not open. */
  readonly cid: string | null;
  /** The transport of the current connection, or of the next one while reconnecting. */
  readonly transport: DMBTransport;
  on<E extends keyof DMBEvents>(event: E, fn: DMBEvents[E]): this;
  off<E extends keyof DMBEvents>(event: E, fn: DMBEvents[E]): this;
  /**
   * Sends data; resolves on DMB's ack, rejects on its error, on a close that
   * ends the session, or when not connected. After a close that reconnects
   * it waits, and is sent again on the next connection.
   */
  send(data: unknown): Promise<void>;
  /**
   * Sends data; resolves with the data of the final direct reply whose
   * reply_to is its id. Partial replies ("more": true) go to onProgress.
   * It waits across a reconnect, and rejects when DMB had acked it and the
   * session was not resumed (its reply went to the old session).
   */
  request<T = any, P = any>(data: unknown, options?: RequestOptions<P>): Promise<T>;
  /** Sends dmb:join; resolves on DMB's ack, rejects on its error ("not allowed", ...). */
  join(room: string): Promise<void>;
  /** Sends dmb:leave; resolves on DMB's ack, rejects on its error. */
  leave(room: string): Promise<void>;
  /** Closes for good: no reconnect. */
  close(): void;
}
