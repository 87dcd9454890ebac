// A small DMB backend library for Node, on the `redis` package (v5).
//
// A DMB backend talks only to Redis (docs/protocol.md in DMB's repository): it registers a
// service and gets a bkid, listens to its clients' events on
// dmb:uplink:{bkid}, and answers on dmb:{bkid}. This module mirrors the Go
// package github.com/dmb-broker/dmb/backend:
//
//   const client = createClient({ socket: { host: 'localhost', port: 6379 } });
//   const b = new Backend(client, 'chat');
//   process.once('SIGTERM', () => b.stop());
//   await b.run(async (ev) => {
//     if (ev.type === 'message') await b.direct(ev.cid, ev.data, ev.id);
//   }); // until b.stop()
//
// The client may be one of createClient (a single Redis), createSentinel
// (the master that the sentinels name) or createCluster (a Redis Cluster, on
// which the backend speaks sharded pub/sub, SSUBSCRIBE and SPUBLISH, as DMB
// does there: protocol, section 1).
//
// run() survives a Redis restart or failover: node-redis reconnects and
// resubscribes by itself (to the new master, behind Sentinel), and the
// backend then registers again with the same bkid, following a new bkid when
// DMB hands out another one (Redis lost its data). On a cluster, node-redis
// does not notice by itself that a master died and its replica took over
// (it learns of moved slots from MOVED answers, which a dead master does not
// send): the backend then replaces its cluster connections with fresh ones,
// which read the slots again, and registers again.
//
// Rooms (protocol, section 10): join() and leave(room, ...) change the rooms
// of a client ({ cid }) or of every connection of a user ({ user }), room()
// sends to a room's members, broadcast() and room() leave out the cids in
// { except }, and presence() gathers every node's answer into one result.
// Clients that join or leave by themselves arrive as room_joined and
// room_left events.
//
// Recoverable publishing (protocol, section 11): every downlink command
// (publish() and every method built on it) is published recoverably by
// default, with FCALL dmb_publish on the downlink channel: DMB keeps it in
// the backend's history, clients get it with an offset, and a client that
// resumes its session within DMB_RESUME_WINDOW gets what it missed.
// new Backend(client, service, { liveOnly: true }) publishes every command
// with a plain PUBLISH (live only, never recovered); publish(command, {
// liveOnly: true }) does so for one command. When Redis cannot run the
// function (an older DMB, a Redis that restarted before DMB loaded it
// again, a Redis older than 7, an ACL user without FCALL), the command goes
// out with PUBLISH, live-only, and a warning is logged once; the next
// command tries FCALL again. presence() requests are always a plain
// PUBLISH.
//
// A client that dropped and may come back arrives as a client_disconnected
// event with resumable: true; when it resumes, its client_connected has
// resumed: true and the same cid. Keep a client's state for
// DMB_RESUME_WINDOW after a resumable disconnect.
//
// mintToken() makes the HS256 client tokens DMB accepts when DMB_JWT_SECRET
// is set, with node:crypto only.

import { createHmac, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

const MAX_BACKOFF = 5000; // ms

// The id of every presence request the library sends starts with this; the
// answers to those go to presence(), never to run()'s handler.
const PRESENCE_ID_PREFIX = 'dmb-presence-';

// DMB's function that stores a command in the backend's history and
// publishes it: FCALL dmb_publish 1 <downlink channel> <payload>.
const FUNCTION = 'dmb_publish';

// functionUnavailable reports whether err says that Redis cannot run DMB's
// function for this client: not loaded, FCALL unknown (Redis before 7), or
// not allowed by the ACL.
const functionUnavailable = (err) =>
  /Function not found|^ERR unknown command|^NOPERM/.test(err?.message ?? '');

const ROOM = /^[A-Za-z0-9_.:@/-]{1,128}$/;

function checkRoom(room) {
  if (typeof room !== 'string' || !ROOM.test(room)) {
    throw new Error(`invalid room name ${JSON.stringify(room)}: 1-128 of [A-Za-z0-9_.:@/-]`);
  }
}

// presenceAnswer reports whether ev answers a presence request of the
// library: an answer, or an error about it.
const presenceAnswer = (ev) =>
  (ev?.type === 'presence' || ev?.type === 'error') && typeof ev.id === 'string' && ev.id.startsWith(PRESENCE_ID_PREFIX);

/** DMB answered bk_connect with bk_connect_nack (e.g. an invalid service name). */
export class RegistrationRefused extends Error {
  constructor(reason) {
    super(`registration refused: ${reason}`);
    this.name = 'RegistrationRefused';
  }
}

/** A logger writing one line per entry to stderr; debug goes nowhere. */
export const stderrLogger = Object.fromEntries(
  ['info', 'warn', 'error'].map((level) => [
    level,
    (msg, fields = {}) => {
      const kv = Object.entries(fields).map(([k, v]) => ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
      process.stderr.write(`${new Date().toISOString()} ${level.toUpperCase()} dmb-backend: ${msg}${kv.join('')}\n`);
    },
  ]).concat([['debug', () => {}]]),
);

// modeOf tells the three kinds of node-redis clients apart.
function modeOf(client) {
  if (typeof client.getMasterNode === 'function') return 'sentinel';
  if ('masters' in client) return 'cluster';
  return 'single';
}

// ready reports whether a client, sentinel or cluster can take commands
// (a cluster says only whether it is open).
const ready = (c) => c.isReady ?? c.isOpen;

/** One backend of a DMB service. */
export class Backend {
  #client;
  #mode; // 'single', 'sentinel' or 'cluster'
  // The subscriber: a duplicate of #client on a single Redis; #client
  // itself behind Sentinel and on a cluster, which keep pub/sub connections
  // of their own (on the master; on the master of each channel's slot).
  #sub = null;
  #abort = new AbortController(); // aborted by stop()
  #chain = Promise.resolve(); // handler calls, one at a time
  #recovering = false;
  #renewing = false;
  #down = false;
  #presence = new Map(); // request id -> what takes its answers
  #listening;
  #fellBack = false; // the last recoverable publish fell back to PUBLISH, and said so

  /**
   * @param client a node-redis v5 client from createClient, createSentinel or
   *   createCluster, used to publish; run() and register() connect it when it
   *   is not open. If it has no 'error' listener, the backend adds one
   *   (node-redis would otherwise crash the process on a connection error);
   *   the backend logs connection trouble itself.
   * @param service the service name
   * @param opts prefix (DMB_PREFIX, default "dmb"), registerTimeout (ms, default 5000), logger,
   *   liveOnly (publish every command with a plain PUBLISH, never recovered; default false)
   */
  constructor(client, service, { prefix = 'dmb', registerTimeout = 5000, logger = stderrLogger, liveOnly = false } = {}) {
    this.#client = client;
    this.#mode = modeOf(client);
    this.service = service;
    this.prefix = prefix;
    this.registerTimeout = registerTimeout;
    this.log = logger;
    /** Publish every downlink command with a plain PUBLISH, never recovered. */
    this.liveOnly = liveOnly;
    /** The bkid, null before the first registration. */
    this.bkid = null;
    /** Resolves once run() listens on the uplink for the first time. */
    this.ready = new Promise((resolve) => (this.#listening = resolve));
    if (client.listenerCount('error') === 0) {
      client.on('error', (err) => this.log.debug?.('redis error', { err: err?.message ?? String(err) }));
    }
  }

  get #stopped() {
    return this.#abort.signal.aborted;
  }

  // connectClient opens #client unless it is open; a single client keeps
  // retrying by itself, and is awaited until it is ready or its first
  // attempt failed (register() then says Redis is not connected, and run()
  // tries again); the others are awaited.
  async #connectClient() {
    if (this.#client.isOpen) return;
    const connecting = this.#client.connect();
    if (this.#mode === 'single') {
      connecting.catch((err) => this.log.error('redis client gave up', { err: err.message }));
      let failed;
      const attempt = new Promise((resolve) => {
        failed = resolve;
        this.#client.once('error', failed);
      });
      try {
        await Promise.race([connecting.catch(() => {}), attempt]);
      } finally {
        this.#client.off('error', failed);
      }
      return;
    }
    await connecting;
  }

  async #subscriber() {
    await this.#connectClient();
    if (!this.#sub) {
      if (this.#mode !== 'single') {
        this.#sub = this.#client;
        return this.#sub;
      }
      const sub = this.#client.duplicate();
      sub.on('error', (err) => {
        if (!this.#down) this.log.warn('redis connection lost; reconnecting', { err: err.message });
        this.#down = true;
      });
      this.#sub = sub;
      await sub.connect();
    }
    return this.#sub;
  }

  // subscribe, unsubscribe and publish speak sharded pub/sub on a cluster.
  #subscribe(sub, channel, listener) {
    return this.#mode === 'cluster' ? sub.sSubscribe(channel, listener) : sub.subscribe(channel, listener);
  }

  #unsubscribe(sub, channel) {
    return this.#mode === 'cluster' ? sub.sUnsubscribe(channel) : sub.unsubscribe(channel);
  }

  #publish(channel, payload) {
    return this.#mode === 'cluster' ? this.#client.sPublish(channel, payload) : this.#client.publish(channel, payload);
  }

  /**
   * Register once and return the bkid; with a bkid already, ask to keep it.
   * Subscribes to dmb:register:{nonce} before it publishes bk_connect, so the
   * answer cannot be missed. Rejects with RegistrationRefused on a nack, and
   * with another error when no answer comes within registerTimeout (or no DMB
   * node listens) or Redis is unreachable.
   */
  async register() {
    const sub = await this.#subscriber();
    if (!ready(sub) || !ready(this.#client)) throw new Error('redis not connected');
    const nonce = `n-${randomBytes(12).toString('hex')}`;
    const reply = `${this.prefix}:register:${nonce}`;
    const req = { type: 'bk_connect', nonce, service: this.service };
    if (this.bkid) req.bkid = this.bkid;
    let answered;
    const answer = new Promise((resolve) => (answered = resolve));
    const attempt = (async () => {
      await this.#subscribe(sub, reply, (msg) => answered(msg));
      const receivers = await this.#publish(`${this.prefix}:register`, JSON.stringify(req));
      if (receivers === 0) {
        throw new Error(
          `no DMB node listens on ${this.prefix}:register of this Redis: start DMB, or point this backend at the Redis ` +
            'DMB uses (`dmb -dev` logs the address of its embedded Redis) with the same DMB_PREFIX',
        );
      }
      return answer;
    })();
    let ans;
    try {
      ans = JSON.parse(await within(attempt, this.registerTimeout, 'answer to bk_connect'));
    } finally {
      this.#unsubscribe(sub, reply).catch(() => {});
    }
    if (ans?.type === 'bk_connect_nack') throw new RegistrationRefused(ans.error ?? 'refused');
    if (ans?.type !== 'bk_connect_ack' || ans.nonce !== nonce || typeof ans.bkid !== 'string' || !ans.bkid) {
      throw new Error(`unexpected answer to bk_connect: ${JSON.stringify(ans).slice(0, 200)}`);
    }
    if (this.bkid && ans.bkid !== this.bkid) {
      this.log.info('bkid changed after Redis lost the registry', { old: this.bkid, new: ans.bkid });
    } else {
      this.log.info('registered', { service: this.service, bkid: ans.bkid });
    }
    this.bkid = ans.bkid;
    return ans.bkid;
  }

  // registerRetrying registers until DMB answers, with backoff; it returns
  // null once stopped and rejects only with RegistrationRefused.
  #registerRetrying() {
    return this.#retrying('registration', () => this.register());
  }

  // retrying calls attempt until it resolves, with backoff, logging each
  // failure of what; it returns null once stopped and rejects only with
  // RegistrationRefused.
  async #retrying(what, attempt) {
    for (let backoff = 100; !this.#stopped; backoff = Math.min(backoff * 2, MAX_BACKOFF)) {
      try {
        return await attempt();
      } catch (err) {
        if (err instanceof RegistrationRefused) throw err;
        if (this.#stopped) break;
        this.log.warn(`${what} failed; retrying`, { err: err.message, retry_in_ms: backoff });
      }
      try {
        await sleep(backoff, undefined, { signal: this.#abort.signal });
      } catch {
        break; // stopped
      }
    }
    return null;
  }

  #uplink(bkid) {
    return `${this.prefix}:uplink:${bkid}`;
  }

  async #listen(bkid, handler) {
    await this.#subscribe(this.#sub, this.#uplink(bkid), (payload) => {
      let ev;
      try {
        ev = JSON.parse(payload);
      } catch {
        this.log.warn('undecodable uplink event', { payload: payload.slice(0, 200) });
        return;
      }
      if (presenceAnswer(ev)) {
        this.#presence.get(ev.id)?.(ev); // not in the handler's chain: a handler may await presence()
        return;
      }
      this.#chain = this.#chain
        .then(() => handler(ev))
        .catch((err) => this.log.error('handler failed', { type: ev?.type, err: err?.stack ?? String(err) }));
    });
  }

  // afterFailure registers again whenever the subscriber is back after a
  // Redis failure, and returns what stops that. node-redis resubscribes
  // by itself before it says it is back: on the same server ('ready'), or
  // on the new master behind Sentinel ('topology-change'). On a cluster, a
  // failing node starts a renewal of the cluster's connections.
  #afterFailure(handler) {
    const [emitter, event, on] = {
      single: [this.#sub, 'ready', () => this.#back(handler)],
      sentinel: [this.#client, 'topology-change', (ev) => ev?.type === 'MASTER_CHANGE' && this.#back(handler)],
      cluster: [this.#client, 'node-error', (err, node) => this.#renew(handler, err, node)],
    }[this.#mode];
    emitter.on(event, on);
    return () => emitter.off(event, on);
  }

  #back(handler) {
    this.#down = false;
    this.log.info('redis connection back; registering again', { bkid: this.bkid });
    this.#recover(handler);
  }

  // renew replaces the cluster's connections with fresh ones, which read the
  // slots again, until the uplink is subscribed again, then registers again.
  // node-redis learns that a slot moved from MOVED answers, which a master
  // that died never sends: it would otherwise keep dialling it after its
  // replica took over. Commands pending on the old connections fail.
  async #renew(handler, err, node) {
    if (this.#renewing || this.#stopped) return;
    this.#renewing = true;
    this.log.warn('redis cluster node failed; renewing the cluster connections', {
      node: `${node?.host}:${node?.port}`, err: err?.message ?? String(err),
    });
    try {
      const renewed = await this.#retrying('renewing the cluster connections', async () => {
        await this.#client.destroy();
        await within(this.#client.connect(), this.registerTimeout, 'connection to the cluster');
        await within(this.#listen(this.bkid, handler), this.registerTimeout, 'uplink subscription');
        return true;
      });
      if (renewed) this.#back(handler);
    } finally {
      this.#renewing = false;
    }
  }

  /**
   * Register, then call handler(event) for every uplink event until stop().
   * Events come one at a time, in order (an async handler is awaited before
   * the next event); an exception in handler is logged. Rejects with
   * RegistrationRefused if DMB refuses the service.
   */
  async run(handler) {
    const stopped = new Promise((resolve) => this.#abort.signal.addEventListener('abort', resolve, { once: true }));
    try {
      const connected = this.#subscriber();
      connected.catch(() => {}); // it may lose the race
      await Promise.race([connected, stopped]);
      if (this.#stopped) return;
      if (!this.bkid && !(await this.#registerRetrying())) return;
      // From here, make sure DMB still knows us after each reconnect.
      const off = this.#afterFailure(handler);
      try {
        const listening = this.#listen(this.bkid, handler);
        listening.catch(() => {}); // it may lose the race
        await Promise.race([listening, stopped]);
        if (!this.#stopped) this.#listening();
        await stopped;
      } finally {
        off();
      }
    } finally {
      const sub = this.#sub;
      this.#sub = null;
      if (sub === this.#client) {
        if (this.bkid) await this.#unsubscribe(sub, this.#uplink(this.bkid)).catch(() => {});
      } else if (sub?.isOpen) {
        await sub.destroy();
      }
    }
  }

  async #recover(handler) {
    if (this.#recovering) return;
    this.#recovering = true;
    try {
      for (;;) {
        const old = this.bkid;
        const got = await this.#registerRetrying();
        if (!got || got === old || !this.#sub) return;
        // A new bkid: listen on it, drop the old one, make sure DMB keeps it.
        await this.#listen(got, handler);
        await this.#unsubscribe(this.#sub, this.#uplink(old));
      }
    } catch (err) {
      this.log.error('registering again after a reconnect failed', { err: err.message });
    } finally {
      this.#recovering = false;
    }
  }

  /** Make run() return; closes the subscriber connection. */
  stop() {
    this.#abort.abort();
  }

  // publishRecoverably publishes with DMB's function, which keeps the
  // command in the backend's history; with PUBLISH when Redis cannot run it.
  async #publishRecoverably(channel, payload) {
    try {
      await this.#client.fCall(FUNCTION, { keys: [channel], arguments: [payload] });
      this.#fellBack = false;
      return;
    } catch (err) {
      if (!functionUnavailable(err)) throw err;
      if (!this.#fellBack) {
        this.#fellBack = true;
        this.log.warn(
          `Redis cannot run DMB's ${FUNCTION} function: publishing live-only (PUBLISH) until it can; ` +
            'the nodes load it at start and after a Redis restart (a DMB without sessions does not), ' +
            'and a Redis ACL user needs FCALL and the history keys (docs/security.md)',
          { bkid: this.bkid, err: err.message },
        );
      }
    }
    await this.#publish(channel, payload);
  }

  /**
   * Publish a downlink command as is; add `id` to get bk_message_ack events.
   * Recoverable (FCALL dmb_publish) unless liveOnly (by default the
   * backend's liveOnly).
   */
  async publish(command, { liveOnly = this.liveOnly } = {}) {
    if (!this.bkid) throw new Error('not registered');
    const channel = `${this.prefix}:${this.bkid}`;
    const payload = JSON.stringify(command);
    await (liveOnly ? this.#publish(channel, payload) : this.#publishRecoverably(channel, payload));
  }

  /**
   * Send data to every client of the service, on every node, but the cids
   * in except.
   */
  broadcast(data, { except } = {}) {
    const cmd = { type: 'broadcast', data };
    if (except?.length) cmd.except = [...except];
    return this.publish(cmd);
  }

  /** Send data to one client; replyTo (the id of its message) lets it match the reply. */
  direct(cid, data, replyTo) {
    const cmd = { type: 'direct', cid, data };
    if (replyTo !== undefined && replyTo !== null) cmd.reply_to = replyTo;
    return this.publish(cmd);
  }

  /** Send data to every connection of a user (needs DMB_JWT_SECRET on the nodes). */
  directUser(user, data) {
    return this.publish({ type: 'direct', user, data });
  }

  /** Close a client with 4009 and reason. */
  kick(cid, reason) {
    return this.publish({ type: 'kick', cid, reason });
  }

  /**
   * Put a client ({ cid }) or every connection of a user ({ user }, needs
   * auth) in room. Commands of one backend apply in the order published: a
   * room() message published after join() reaches the new member, who is
   * told dmb:joined.
   */
  async join(room, who = {}) {
    await this.publish(membership('join', room, who));
  }

  /**
   * With a room: take a client ({ cid }) or a user's connections ({ user })
   * out of it. Without arguments: tell DMB the backend goes away
   * (bk_disconnect): its clients move to the other backends; that resolves
   * to false, without waiting, when Redis is down (DMB then notices within
   * DMB_BACKEND_TIMEOUT).
   */
  async leave(room, who) {
    if (room !== undefined || who !== undefined) {
      await this.publish(membership('leave', room, who ?? {}));
      return true;
    }
    if (!this.bkid) return true;
    if (!ready(this.#client)) return false;
    await this.#publish(`${this.prefix}:register`, JSON.stringify({ type: 'bk_disconnect', bkid: this.bkid }));
    return true;
  }

  /** Send data to every member of room, on every node, but the cids in except. */
  async room(room, data, { except } = {}) {
    checkRoom(room);
    const cmd = { type: 'room', room, data };
    if (except?.length) cmd.except = [...except];
    await this.publish(cmd);
  }

  /**
   * Ask every node for the clients of room (undefined or null: the whole
   * service) and gather the answers, until as many nodes as the answering
   * nodes count have answered or timeout ms have passed (a node that died
   * meanwhile). Resolves to { room, members (null with countOnly), count,
   * nodes (those that answered), complete, truncated }. The answers come on
   * the uplink that run() listens to and never reach its handler, which may
   * await presence(). Rejects on an invalid room name, when run() is not
   * listening, or when a node refuses the request.
   */
  async presence(room, { countOnly = false, timeout = 2000 } = {}) {
    if (room !== undefined && room !== null) checkRoom(room);
    if (!this.bkid) throw new Error('not registered');
    if (!this.#sub) throw new Error('presence() needs run(): its answers come on the uplink');
    const id = `${PRESENCE_ID_PREFIX}${randomBytes(12).toString('hex')}`;
    const cmd = { type: 'presence', id };
    if (room !== undefined && room !== null) cmd.room = room;
    if (countOnly) cmd.count_only = true;
    const result = { room: room ?? null, members: countOnly ? null : [], count: 0, nodes: [], complete: false, truncated: false };
    let timer;
    const gathered = new Promise((resolve, reject) => {
      let want = 0;
      this.#presence.set(id, (ev) => {
        if (ev.type === 'error') {
          reject(new Error(`presence refused by node ${ev.node}: ${ev.error}`));
          return;
        }
        if (result.nodes.includes(ev.node)) return;
        result.nodes.push(ev.node);
        want = Math.max(want, ev.nodes ?? 0);
        const members = Array.isArray(ev.members) ? ev.members : [];
        if (!countOnly) result.members.push(...members);
        result.count += Math.max(ev.count ?? 0, members.length);
        result.truncated ||= ev.truncated === true;
        if (result.nodes.length >= want) {
          result.complete = true;
          resolve(result);
        }
      });
      timer = setTimeout(() => resolve(result), timeout);
    });
    try {
      await this.publish(cmd, { liveOnly: true }); // a question, not a message: never kept
      return await gathered;
    } finally {
      clearTimeout(timer);
      this.#presence.delete(id);
    }
  }
}

// membership returns a join or leave command for a cid or, without one, a
// user.
function membership(type, room, { cid, user } = {}) {
  checkRoom(room);
  if (cid) return { type, room, cid };
  if (user) return { type, room, user };
  throw new Error(`${type} needs a cid or a user`);
}

// within resolves as promise does, or rejects once ms have passed.
async function within(promise, ms, what) {
  promise.catch(() => {}); // it may lose the race
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Return an HS256 JWT for user, valid for ttlSeconds, for DMB's ?token=.
 * secret is DMB_JWT_SECRET (string or Buffer, at least 32 bytes); services,
 * when given, lists the services the token admits (every service otherwise).
 */
export function mintToken(secret, user, ttlSeconds, services) {
  const key = Buffer.from(secret);
  if (key.length < 32) throw new Error('secret must be at least 32 bytes');
  if (!user || !(ttlSeconds > 0)) throw new Error('a token needs a user and a positive lifetime');
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, iat: now, exp: now + Math.ceil(ttlSeconds) };
  if (services?.length) claims.svc = [...services];
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  return `${input}.${createHmac('sha256', key).update(input).digest('base64url')}`;
}
