"""A small DMB backend library for Python, on redis-py.

A DMB backend talks only to Redis (docs/protocol.md in DMB's repository): it registers a service
and gets a bkid, listens to its clients' events on dmb:uplink:{bkid}, and
answers on dmb:{bkid}. This module mirrors the Go package
github.com/dmb-broker/dmb/backend:

    r = redis.Redis(host="localhost", port=6379)
    b = Backend(r, "chat")

    def on_event(ev):
        if ev["type"] == "message":
            b.direct(ev["cid"], ev.get("data"), reply_to=ev.get("id"))

    b.run(on_event)  # until b.stop(), e.g. from a signal handler

redis_client may be a redis.Redis on one server, the client that
redis.sentinel.Sentinel(...).master_for(name) returns (it asks the sentinels
for the master on every new connection, so it follows a failover), or a
redis.cluster.RedisCluster, on which the backend speaks sharded pub/sub
(SSUBSCRIBE, SPUBLISH) as DMB does there (protocol, section 1).

Rooms (protocol, section 10): join() and leave(room, ...) change the rooms of a
client (cid=) or of every connection of a user (user=), room() sends to a
room's members, broadcast() and room() leave out the cids in except_, and
presence() gathers every node's answer into one result. Clients that join
or leave by themselves arrive as room_joined and room_left events.

Recoverable publishing (protocol, section 11): every downlink command
(publish() and all the methods built on it) is published recoverably by
default, with FCALL dmb_publish on the downlink channel: DMB keeps it in the
backend's history, clients get it with an "offset", and a client that
resumes its session within DMB_RESUME_WINDOW gets what it missed.
Backend(..., live_only=True) publishes every command with a plain PUBLISH
(live only, never recovered); publish(command, live_only=True) does so for
one command. When Redis cannot run the function (an older DMB, a Redis
that restarted before DMB loaded it again, a Redis older than 7, an ACL
user without FCALL), the command goes out with PUBLISH, live-only, and a
warning is logged once; the next command tries FCALL again. presence()
requests are always a plain PUBLISH.

A client that dropped and may come back arrives as a client_disconnected
event with "resumable": True; when it resumes, its client_connected has
"resumed": True and the same cid. Keep a client's state for
DMB_RESUME_WINDOW after a resumable disconnect.

run() survives a Redis restart or failover: it reconnects with backoff,
registers again with the same bkid, and follows a new bkid when DMB hands
out another one (Redis lost its data).

mint_token() makes the HS256 client tokens DMB accepts when DMB_JWT_SECRET
is set; it needs nothing but the standard library.
"""

import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time

import redis
from redis.cluster import RedisCluster

__all__ = ["Backend", "RegistrationRefused", "mint_token"]

__version__ = "1.0.0"

log = logging.getLogger("dmb_backend")

# Errors after which run() reconnects and registers again.
_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)

_MAX_BACKOFF = 5.0  # seconds
_POLL = 0.25  # seconds between checks of stop() while waiting

# The id of every presence request the library sends starts with this; the
# answers to those are gathered by presence() and never handed to run()'s
# handler.
_PRESENCE_ID_PREFIX = "dmb-presence-"

# DMB's function that stores a command in the backend's history and
# publishes it: FCALL dmb_publish 1 <downlink channel> <payload>.
_FUNCTION = "dmb_publish"

_ROOM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@/-")


class RegistrationRefused(Exception):
    """DMB answered bk_connect with bk_connect_nack (e.g. an invalid service name)."""


class Backend:
    """One backend of a DMB service."""

    def __init__(self, redis_client, service, prefix="dmb", register_timeout=5.0, live_only=False):
        self.redis = redis_client
        self.service = service
        self.prefix = prefix
        self.register_timeout = register_timeout
        # Publish every downlink command with a plain PUBLISH, never recovered.
        self.live_only = live_only
        self._fell_back = False  # the last recoverable publish fell back to PUBLISH, and said so
        self.bkid = None  # set by register()
        self._stop = threading.Event()
        self._reconnected = False
        self._sharded = isinstance(redis_client, RedisCluster)

    # -- registration -----------------------------------------------------

    def register(self):
        """Register once and return the bkid; with a bkid already, ask to keep it.

        Subscribes to dmb:register:{nonce} before it publishes bk_connect, so
        the answer cannot be missed. Raises RegistrationRefused on a nack,
        TimeoutError when no answer comes within register_timeout (or no DMB
        node listens at all), and redis errors when Redis is unreachable.
        """
        nonce = "n-" + secrets.token_hex(12)
        reply = "%s:register:%s" % (self.prefix, nonce)
        req = {"type": "bk_connect", "nonce": nonce, "service": self.service}
        if self.bkid:
            req["bkid"] = self.bkid
        deadline = time.monotonic() + self.register_timeout
        ps = self._pubsub()
        try:
            ps.subscribe(reply)
            self._wait(ps, "subscribe", deadline)
            if self._publish("%s:register" % self.prefix, _dumps(req)) == 0:
                raise TimeoutError(
                    "no DMB node listens on %s:register of this Redis: start DMB, or point this backend at the Redis "
                    "DMB uses (`dmb -dev` logs the address of its embedded Redis) with the same DMB_PREFIX" % self.prefix)
            ans = json.loads(self._wait(ps, "message", deadline)["data"])
        finally:
            ps.close()
        if not isinstance(ans, dict) or ans.get("nonce") != nonce:
            raise TimeoutError("unexpected answer to bk_connect: %r" % (ans,))
        if ans.get("type") == "bk_connect_nack":
            raise RegistrationRefused(ans.get("error", "refused"))
        bkid = ans.get("bkid")
        if ans.get("type") != "bk_connect_ack" or not isinstance(bkid, str) or not bkid:
            raise TimeoutError("unexpected answer to bk_connect: %r" % (ans,))
        if self.bkid and bkid != self.bkid:
            log.info("bkid changed after Redis lost the registry: %s -> %s", self.bkid, bkid)
        else:
            log.info("registered service %s as bkid %s", self.service, bkid)
        self.bkid = bkid
        return bkid

    def _wait(self, ps, typ, deadline):
        """Read ps until a message of type typ, or raise TimeoutError at deadline."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                raise TimeoutError("no %s within %.1fs" % (typ, self.register_timeout))
            msg = ps.get_message(timeout=min(left, _POLL))
            if msg and msg["type"] == typ:
                return msg

    # -- listening --------------------------------------------------------

    def run(self, handler):
        """Register, then call handler(event_dict) for every uplink event until stop().

        Events come one at a time, in order. An exception in handler is
        logged and does not stop the loop. On a Redis failure run() retries
        with backoff, then registers again with the same bkid before it
        handles what follows. Raises RegistrationRefused if DMB refuses the
        service.
        """
        ps = None
        try:
            while not self._stop.is_set():
                if ps is None:
                    ps = self._connect()
                    if ps is None:
                        break  # stopped
                try:
                    msg = ps.get_message(timeout=_POLL)
                    if self._reconnected:  # the client reconnected on its own
                        raise redis.exceptions.ConnectionError("pub/sub connection was re-established")
                except _RETRYABLE as e:
                    log.warning("lost the uplink subscription: %s", e)
                    _close(ps)
                    ps = None
                    continue
                if not msg or msg["type"] != "message":
                    continue
                try:
                    ev = json.loads(msg["data"])
                except ValueError:
                    log.warning("undecodable uplink event: %.200r", msg["data"])
                    continue
                if _presence_answer(ev):
                    continue  # presence() gathers these on a subscription of its own
                try:
                    handler(ev)
                except Exception:
                    log.exception("handler failed on a %s event", ev.get("type") if isinstance(ev, dict) else "?")
        finally:
            _close(ps)

    def stop(self):
        """Make run() return soon (within a fraction of a second). Safe from a signal handler."""
        self._stop.set()

    def _connect(self):
        """Return a pub/sub subscribed to the uplink of a registered bkid, or None once stopped."""
        backoff = 0.1
        while not self._stop.is_set():
            ps = None
            try:
                fresh = self.bkid is None
                if fresh:
                    self.register()
                bkid = self.bkid
                # Subscribe first, so that from the ack on the backend is live.
                ps = self._subscribe(self._uplink(bkid))
                if not fresh:
                    self._reregister(ps, bkid)
                return ps
            except RegistrationRefused:
                _close(ps)
                raise
            except _RETRYABLE as e:
                _close(ps)
                log.warning("registration failed (%s); retrying in %.1fs", e, backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, _MAX_BACKOFF)
        return None

    def _reregister(self, ps, bkid):
        """Register again while ps listens on bkid's uplink; follow a new bkid."""
        old = []
        while self.register() != bkid:
            # A new bkid: listen on it too, then make sure DMB keeps it.
            # Events that came on the old uplink meanwhile stay in ps and
            # are handled; clients bound to it move to the new bkid.
            old.append(bkid)
            bkid = self.bkid
            ps.subscribe(self._uplink(bkid))
        if old:
            ps.unsubscribe(*[self._uplink(b) for b in old])

    def _uplink(self, bkid):
        return "%s:uplink:%s" % (self.prefix, bkid)

    def _subscribe(self, channel):
        ps = self._pubsub()
        try:
            ps.subscribe(channel)
            self._wait(ps, "subscribe", time.monotonic() + self.register_timeout)
            self._reconnected = False
            conn = getattr(ps, "connection", None)
            if conn is not None and hasattr(conn, "register_connect_callback"):
                # A client configured with retries may reconnect (and
                # resubscribe) by itself: notice it, to register again.
                conn.register_connect_callback(self._on_connect)
        except BaseException:
            _close(ps)
            raise
        return ps

    def _on_connect(self, _connection):
        self._reconnected = True

    def _pubsub(self):
        if self._sharded:
            return _ShardedPubSub(self.redis)
        return self.redis.pubsub()

    def _publish(self, channel, payload):
        """PUBLISH, or on a cluster SPUBLISH to the master of channel's slot; returns the receivers."""
        if self._sharded:
            node = self.redis.get_node_from_key(channel)
            return self.redis.execute_command("SPUBLISH", channel, payload, target_nodes=node)
        return self.redis.publish(channel, payload)

    def _fcall(self, channel, payload):
        """FCALL DMB's function on channel (on a cluster, at the master of its slot)."""
        if self._sharded:
            node = self.redis.get_node_from_key(channel)
            return self.redis.execute_command("FCALL", _FUNCTION, 1, channel, payload, target_nodes=node)
        return self.redis.fcall(_FUNCTION, 1, channel, payload)

    def _publish_recoverably(self, channel, payload):
        """Publish with DMB's function, kept in the backend's history; with PUBLISH when Redis cannot run it."""
        try:
            self._fcall(channel, payload)
        except redis.exceptions.ResponseError as e:
            if not _function_unavailable(e):
                raise
            if not self._fell_back:
                self._fell_back = True
                log.warning("Redis cannot run DMB's %s function (%s): publishing live-only (PUBLISH) until it can; "
                            "the nodes load it at start and after a Redis restart (a DMB without sessions does not), "
                            "and a Redis ACL user needs FCALL and the history keys (docs/security.md)", _FUNCTION, e)
            self._publish(channel, payload)
            return
        self._fell_back = False

    # -- downlink ---------------------------------------------------------

    def publish(self, command, live_only=None):
        """Publish a downlink command (a dict) as is; add "id" to get bk_message_ack events.

        Recoverable (FCALL dmb_publish) unless live_only, or the backend's
        live_only when live_only is None.
        """
        if not self.bkid:
            raise RuntimeError("not registered")
        channel, payload = "%s:%s" % (self.prefix, self.bkid), _dumps(command)
        if self.live_only if live_only is None else live_only:
            self._publish(channel, payload)
        else:
            self._publish_recoverably(channel, payload)

    def broadcast(self, data, except_=None):
        """Send data to every client of the service, on every node, but the cids in except_."""
        cmd = {"type": "broadcast", "data": data}
        if except_:
            cmd["except"] = list(except_)
        self.publish(cmd)

    def direct(self, cid, data, reply_to=None):
        """Send data to one client; reply_to (the id of its message) lets it match the reply."""
        cmd = {"type": "direct", "cid": cid, "data": data}
        if reply_to is not None:
            cmd["reply_to"] = reply_to
        self.publish(cmd)

    def direct_user(self, user, data):
        """Send data to every connection of a user (needs DMB_JWT_SECRET on the nodes)."""
        self.publish({"type": "direct", "user": user, "data": data})

    def kick(self, cid, reason):
        """Close a client with 4009 and reason."""
        self.publish({"type": "kick", "cid": cid, "reason": reason})

    def join(self, room, cid=None, user=None):
        """Put a client (cid=) or every connection of a user (user=, needs auth) in room.

        Commands of one backend apply in the order published: a room() message
        published after join() reaches the new member, who is told dmb:joined.
        """
        self.publish(_membership("join", room, cid, user))

    def leave(self, room=None, cid=None, user=None):
        """With a room: take a client (cid=) or a user's connections (user=) out of it.

        Without arguments: tell DMB the backend goes away (bk_disconnect): its
        clients move to other backends.
        """
        if room is not None or cid is not None or user is not None:
            self.publish(_membership("leave", room, cid, user))
            return
        if self.bkid:
            self._publish("%s:register" % self.prefix, _dumps({"type": "bk_disconnect", "bkid": self.bkid}))

    def room(self, room, data, except_=None):
        """Send data to every member of room, on every node, but the cids in except_."""
        _check_room(room)
        cmd = {"type": "room", "room": room, "data": data}
        if except_:
            cmd["except"] = list(except_)
        self.publish(cmd)

    def presence(self, room=None, count_only=False, timeout=2.0):
        """Ask every node for the clients of room (None: the whole service) and gather the answers.

        Waits until as many nodes as the answering nodes count have answered,
        or timeout seconds passed (a node that died meanwhile). Returns a dict:
        room, members (a list of {"cid", "user"}; None with count_only),
        count (summed), nodes (those that answered), complete (every node
        answered) and truncated (a node had more members than it lists).
        Listens on a subscription of its own, so run()'s handler may call it;
        the answers never reach the handler. Raises ValueError for an invalid
        room name, RuntimeError when a node refuses the request, and redis
        errors when Redis is unreachable.
        """
        if room is not None:
            _check_room(room)
        if not self.bkid:
            raise RuntimeError("not registered")
        req_id = _PRESENCE_ID_PREFIX + secrets.token_hex(12)
        cmd = {"type": "presence", "id": req_id}
        if room is not None:
            cmd["room"] = room
        if count_only:
            cmd["count_only"] = True
        result = {"room": room, "members": None if count_only else [], "count": 0, "nodes": [],
                  "complete": False, "truncated": False}
        deadline = time.monotonic() + timeout
        ps = self._pubsub()
        try:
            # Subscribed before asking, or an answer could be missed.
            ps.subscribe(self._uplink(self.bkid))
            try:
                self._wait(ps, "subscribe", deadline)
            except TimeoutError:
                return result
            self.publish(cmd, live_only=True)  # a question, not a message: never kept
            want = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return result
                msg = ps.get_message(timeout=min(left, _POLL))
                if not msg or msg["type"] != "message":
                    continue
                try:
                    ev = json.loads(msg["data"])
                except ValueError:
                    continue
                if not isinstance(ev, dict) or ev.get("id") != req_id:
                    continue
                if ev.get("type") == "error":
                    raise RuntimeError("presence refused by node %s: %s" % (ev.get("node"), ev.get("error")))
                if ev.get("type") != "presence" or ev.get("node") in result["nodes"]:
                    continue
                result["nodes"].append(ev.get("node"))
                want = max(want, ev.get("nodes") or 0)
                members = ev.get("members")
                if members is not None and not count_only:
                    result["members"].extend(members)
                result["count"] += max(ev.get("count") or 0, len(members or []))
                result["truncated"] = result["truncated"] or bool(ev.get("truncated"))
                if len(result["nodes"]) >= want:
                    result["complete"] = True
                    return result
        finally:
            _close(ps)

    @staticmethod
    def mint_token(secret, user, ttl_seconds, services=None):
        return mint_token(secret, user, ttl_seconds, services)


def mint_token(secret, user, ttl_seconds, services=None):
    """Return an HS256 JWT for user, valid for ttl_seconds, for DMB's ?token=.

    secret is DMB_JWT_SECRET (str or bytes, at least 32 bytes); services, when
    given, lists the services the token admits (every service otherwise).
    """
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < 32:
        raise ValueError("secret must be at least 32 bytes")
    if not user or ttl_seconds <= 0:
        raise ValueError("a token needs a user and a positive lifetime")
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + math.ceil(ttl_seconds)}
    if services:
        claims["svc"] = list(services)
    header = _b64(_dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = header + "." + _b64(_dumps(claims).encode())
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


class _ShardedPubSub:
    """The part of redis.client.PubSub that Backend uses, with SSUBSCRIBE on a cluster.

    redis-py 4 has no sharded pub/sub (redis-py 5 has it: RedisCluster.pubsub()
    with ssubscribe and get_sharded_message); this stands in for it. Each
    channel is subscribed on a connection of its own to the master that owns
    its slot, and its replies come back as redis-py's "subscribe" and
    "message" dicts. A connection failure re-reads the cluster's slots and
    raises, so that the caller's next attempt reaches the new master.
    """

    def __init__(self, cluster):
        self._cluster = cluster
        self._conns = {}  # channel -> redis.connection.Connection
        self.connection = None  # no reconnect callbacks: a failure raises

    def subscribe(self, *channels):
        for ch in channels:
            try:
                node = self._cluster.get_node_from_key(ch)
            except redis.exceptions.RedisClusterException as e:
                raise redis.exceptions.ConnectionError("find the master of %s: %s" % (ch, e)) from e
            conn = self._cluster.get_redis_connection(node).connection_pool.make_connection()
            self._conns[ch] = conn
            self._call(conn, "subscribe to %s on %s" % (ch, node.name), conn.send_command, "SSUBSCRIBE", ch)

    def unsubscribe(self, *channels):
        for ch in channels:
            conn = self._conns.pop(ch, None)
            if conn is not None:
                conn.disconnect()

    def get_message(self, timeout=0.0):
        """Return the next "subscribe" or "message" dict, or None after timeout seconds."""
        conns = list(self._conns.items())
        if not conns:
            time.sleep(timeout)
            return None
        for ch, conn in conns:
            what = "read %s" % ch
            if not self._call(conn, what, conn.can_read, timeout / len(conns)):
                continue
            reply = self._call(conn, what, conn.read_response)
            kind = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if kind in ("ssubscribe", "smessage"):
                typ = "subscribe" if kind == "ssubscribe" else "message"
                return {"type": typ, "pattern": None, "channel": reply[1], "data": reply[2]}
        return None

    def close(self):
        self.unsubscribe(*list(self._conns))

    def _call(self, conn, what, fn, *args):
        try:
            return fn(*args)
        except _RETRYABLE + (redis.exceptions.ResponseError,) as e:
            # MOVED or CLUSTERDOWN too: the slot has another master, or is
            # about to.
            conn.disconnect()
            try:
                self._cluster.nodes_manager.initialize()
            except _RETRYABLE + (redis.exceptions.RedisClusterException,) as e2:
                log.warning("could not read the cluster's slots again: %s", e2)
            raise redis.exceptions.ConnectionError("%s: %s" % (what, e)) from e


def _check_room(room):
    if not isinstance(room, str) or not 1 <= len(room) <= 128 or not _ROOM_CHARS.issuperset(room):
        raise ValueError("invalid room name %r: 1-128 of [A-Za-z0-9_.:@/-]" % (room,))


def _membership(typ, room, cid, user):
    """A join or leave command for a cid or, without one, a user."""
    _check_room(room)
    if cid:
        return {"type": typ, "room": room, "cid": cid}
    if user:
        return {"type": typ, "room": room, "user": user}
    raise ValueError("%s needs a cid or a user" % typ)


def _function_unavailable(e):
    """Whether e says Redis cannot run DMB's function for this client: not loaded, FCALL unknown, or not allowed."""
    if isinstance(e, redis.exceptions.NoPermissionError):
        return True
    msg = str(e)  # redis-py drops the "ERR " of the reply
    return "Function not found" in msg or msg.startswith(("unknown command", "ERR unknown command"))


def _presence_answer(ev):
    """Whether ev answers a presence request of the library (an answer, or an error about it)."""
    return (isinstance(ev, dict) and ev.get("type") in ("presence", "error")
            and isinstance(ev.get("id"), str) and ev["id"].startswith(_PRESENCE_ID_PREFIX))


def _b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _dumps(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _close(ps):
    if ps is not None:
        try:
            ps.close()
        except Exception:
            pass
