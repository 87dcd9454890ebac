"""The DMB echo backend: answers every message and tells everyone about it."""
import logging, os, signal

import redis
from dmb_backend import Backend

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
r = redis.Redis(host=os.environ.get("REDIS_HOST", "localhost"), port=int(os.environ.get("REDIS_PORT", "6379")),
                socket_connect_timeout=5, socket_keepalive=True)
b = Backend(r, os.environ.get("DMB_SERVICE", "echo"), prefix=os.environ.get("DMB_PREFIX", "dmb"))


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
