"""The DMB echo backend: answers every message and tells everyone about it.

Redis is chosen as DMB chooses it: REDIS_CLUSTER_ADDRS (a Redis Cluster),
else REDIS_SENTINEL_ADDRS and REDIS_SENTINEL_MASTER (the master the sentinels
name), else REDIS_HOST and REDIS_PORT.
"""
import logging, os, signal

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel
from dmb_backend import Backend


def addrs(var):
    """host:port pairs of a comma-separated environment variable."""
    out = []
    for a in os.environ.get(var, "").split(","):
        if a.strip():
            host, _, port = a.strip().rpartition(":")
            out.append((host, int(port)))
    return out


def redis_client():
    opts = dict(socket_connect_timeout=5, socket_keepalive=True)
    if addrs("REDIS_CLUSTER_ADDRS"):
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in addrs("REDIS_CLUSTER_ADDRS")], **opts)
    if addrs("REDIS_SENTINEL_ADDRS"):
        sentinel = Sentinel(addrs("REDIS_SENTINEL_ADDRS"), sentinel_kwargs=dict(
            opts, password=os.environ.get("REDIS_SENTINEL_PASSWORD") or None))
        return sentinel.master_for(os.environ["REDIS_SENTINEL_MASTER"], **opts)
    return redis.Redis(host=os.environ.get("REDIS_HOST", "localhost"), port=int(os.environ.get("REDIS_PORT", "6379")),
                       **opts)


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
b = Backend(redis_client(), os.environ.get("DMB_SERVICE", "echo"), prefix=os.environ.get("DMB_PREFIX", "dmb"))


def on_event(ev):
    if ev["type"] == "message":
        b.direct(ev["cid"], {"echo": ev.get("data")}, reply_to=ev.get("id"))
        b.broadcast({"from": ev["cid"], "data": ev.get("data")})


signal.signal(signal.SIGTERM, lambda *_: b.stop())
signal.signal(signal.SIGINT, lambda *_: b.stop())
b.run(on_event)
try:
    b.leave()
except redis.RedisError as e:
    logging.warning("could not leave: %s", e)
