// Types of @dmb/backend, the Node backend library of DMB.

/** An event on the backend's uplink, exactly as on the wire. */
export interface UplinkEvent {
  type:
    | 'client_connected'
    | 'client_disconnected'
    | 'message'
    | 'bk_message_ack'
    | 'bk_disconnected'
    | 'error'
    | 'room_joined'
    | 'room_left'
    | string;
  cid?: string;
  service?: string;
  remote?: string;
  user?: string;
  data?: unknown;
  id?: string | number;
  code?: number;
  reason?: string;
  node?: string;
  delivered?: number;
  error?: string;
  /** room_joined, room_left: the room a client joined or left by itself. */
  room?: string;
  /**
   * client_connected: the client resumed its session (the same cid as
   * before): keep the state you kept for it.
   */
  resumed?: boolean;
  /**
   * client_disconnected: the client may resume its session within
   * DMB_RESUME_WINDOW (false when it cannot come back): keep its state
   * that long.
   */
  resumable?: boolean;
  [field: string]: unknown;
}

/** Whom a join or a leave is for: one client, or every connection of a user (needs auth). */
export interface Target {
  cid?: string;
  user?: string;
}

/** A client in a presence result; user only with auth. */
export interface Member {
  cid: string;
  user?: string;
}

export interface PresenceOptions {
  /** Ask for the number of members rather than the list. */
  countOnly?: boolean;
  /** How long to wait for every node's answer, in ms; default 2000. */
  timeout?: number;
}

/** Every node's answer to one presence request, gathered. */
export interface PresenceResult {
  /** The room, null for the whole service. */
  room: string | null;
  /** The members every node listed; null with countOnly. */
  members: Member[] | null;
  /** The number of members, summed over the nodes. */
  count: number;
  /** The nodes that answered. */
  nodes: string[];
  /** Every node answered: as many as the answering nodes count. */
  complete: boolean;
  /** A node had more members than it lists (10,000). */
  truncated: boolean;
}

/** Where the backend logs; stderrLogger by default. */
export interface Logger {
  debug?(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface BackendOptions {
  /** DMB_PREFIX of the nodes; default "dmb". */
  prefix?: string;
  /** How long register() waits for DMB's answer, in ms; default 5000. */
  registerTimeout?: number;
  logger?: Logger;
  /**
   * Publish every downlink command with a plain PUBLISH: live only, never
   * kept in DMB's history nor recovered by a client that resumes. Default
   * false: commands are recoverable (FCALL dmb_publish).
   */
  liveOnly?: boolean;
}

export interface PublishOptions {
  /** Publish this command live-only (plain PUBLISH); default: the backend's liveOnly. */
  liveOnly?: boolean;
}

/** DMB answered bk_connect with bk_connect_nack (e.g. an invalid service name). */
export class RegistrationRefused extends Error {
  constructor(reason: string);
}

/** Logs one line per entry to stderr; debug goes nowhere. */
export const stderrLogger: Logger;

/** One backend of a DMB service. */
export class Backend {
  /**
   * @param client a node-redis v5 client from createClient, createSentinel or createCluster
   * @param service the service name: 1-64 of [a-z0-9_.-]
   */
  constructor(client: unknown, service: string, opts?: BackendOptions);
  readonly service: string;
  readonly prefix: string;
  registerTimeout: number;
  log: Logger;
  /** Every downlink command is published live-only (plain PUBLISH), never recovered. */
  liveOnly: boolean;
  /** The bkid, null before the first registration. */
  bkid: string | null;
  /** Resolves once run() listens on the uplink for the first time. */
  readonly ready: Promise<void>;
  /** Register (again, with the same bkid when there is one); resolves to the bkid. */
  register(): Promise<string>;
  /** Register, then hand every uplink event to handler, one at a time, until stop(). */
  run(handler: (ev: UplinkEvent) => void | Promise<void>): Promise<void>;
  /** Make run() return. */
  stop(): void;
  /**
   * Publish a downlink command as is; add `id` to get bk_message_ack events.
   * Recoverable (FCALL dmb_publish) unless live-only; when Redis cannot run
   * DMB's function, it falls back to PUBLISH and logs a warning once.
   */
  publish(command: Record<string, unknown>, opts?: PublishOptions): Promise<void>;
  /** Send data to every client of the service, on every node, but the cids in except. */
  broadcast(data: unknown, opts?: { except?: string[] }): Promise<void>;
  /** Send data to one client; replyTo (the id of its message) lets it match the reply. */
  direct(cid: string, data: unknown, replyTo?: string | number | null): Promise<void>;
  /** Send data to every connection of a user (needs DMB_JWT_SECRET on the nodes). */
  directUser(user: string, data: unknown): Promise<void>;
  /** Close a client with 4009 and reason. */
  kick(cid: string, reason: string): Promise<void>;
  /** Tell DMB the backend goes away; false when Redis is down. */
  leave(): Promise<boolean>;
  /** Take a client, or every connection of a user, out of room. */
  leave(room: string, who: Target): Promise<boolean>;
  /** Put a client, or every connection of a user, in room; it is told dmb:joined. */
  join(room: string, who: Target): Promise<void>;
  /** Send data to every member of room, on every node, but the cids in except. */
  room(room: string, data: unknown, opts?: { except?: string[] }): Promise<void>;
  /**
   * Ask every node for the clients of room (none: the whole service) and
   * gather their answers until every node answered or the timeout passed.
   * Needs run(); its answers never reach run()'s handler.
   */
  presence(room?: string | null, opts?: PresenceOptions): Promise<PresenceResult>;
}

/**
 * An HS256 JWT for user, valid for ttlSeconds, for DMB's ?token=. secret is
 * DMB_JWT_SECRET (at least 32 bytes); services, when given, lists the
 * services the token admits.
 */
export function mintToken(secret: string | Uint8Array, user: string, ttlSeconds: number, services?: string[]): string;
