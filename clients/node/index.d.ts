// Types of @dmb/backend, the Node backend library of DMB.

/** An event on the backend's uplink, exactly as on the wire. */
export interface UplinkEvent {
  type: 'client_connected' | 'client_disconnected' | 'message' | 'bk_message_ack' | 'bk_disconnected' | 'error' | string;
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
  [field: string]: unknown;
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
  /** The bkid, null before the first registration. */
  bkid: string | null;
  /** Register (again, with the same bkid when there is one); resolves to the bkid. */
  register(): Promise<string>;
  /** Register, then hand every uplink event to handler, one at a time, until stop(). */
  run(handler: (ev: UplinkEvent) => void | Promise<void>): Promise<void>;
  /** Make run() return. */
  stop(): void;
  /** Publish a downlink command as is; add `id` to get bk_message_ack events. */
  publish(command: Record<string, unknown>): Promise<void>;
  /** Send data to every client of the service, on every node. */
  broadcast(data: unknown): Promise<void>;
  /** Send data to one client; replyTo (the id of its message) lets it match the reply. */
  direct(cid: string, data: unknown, replyTo?: string | number | null): Promise<void>;
  /** Send data to every connection of a user (needs DMB_JWT_SECRET on the nodes). */
  directUser(user: string, data: unknown): Promise<void>;
  /** Close a client with 4009 and reason. */
  kick(cid: string, reason: string): Promise<void>;
  /** Tell DMB the backend goes away; false when Redis is down. */
  leave(): Promise<boolean>;
}

/**
 * An HS256 JWT for user, valid for ttlSeconds, for DMB's ?token=. secret is
 * DMB_JWT_SECRET (at least 32 bytes); services, when given, lists the
 * services the token admits.
 */
export function mintToken(secret: string | Uint8Array, user: string, ttlSeconds: number, services?: string[]): string;
