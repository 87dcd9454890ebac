#!/usr/bin/env python3
"""Talk to DMB over TCP, one JSON frame per line (docs/protocol.md, section 12).

Says hello, prints every frame DMB sends, and sends each line typed on
standard input as a message. Standard library only.

    python3 examples/tcp/client.py --addr 127.0.0.1:9000 --service chat
"""

import argparse
import json
import socket
import ssl
import sys
import threading


def send(sock, frame):
    """Send one frame as one line of JSON."""
    sock.sendall(json.dumps(frame, separators=(",", ":")).encode() + b"\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="127.0.0.1:9000", help="DMB's TCP address (DMB_TCP_PORT)")
    p.add_argument("--service", default="chat")
    p.add_argument("--token", default="", help="a client token, when DMB_JWT_SECRET is set")
    p.add_argument("--tls", action="store_true", help="speak TLS (DMB_TLS_CERT is set)")
    args = p.parse_args()

    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    if args.tls:
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)

    hello = {"event": "dmb:hello", "service": args.service}
    if args.token:
        hello["token"] = args.token
    send(sock, hello)

    def typed():
        # Each line typed is sent as a message with an id, which DMB acks.
        for i, text in enumerate(sys.stdin, 1):
            send(sock, {"event": "dmb:message", "data": text.rstrip("\n"), "id": i})

    threading.Thread(target=typed, daemon=True).start()

    # Every frame DMB sends is one line; the last, dmb:close, says why the
    # connection ends.
    for line in sock.makefile("rb"):
        frame = json.loads(line)
        print(json.dumps(frame), flush=True)
        if frame.get("event") == "dmb:close":
            print("closed: %s %s" % (frame["code"], frame["reason"]), file=sys.stderr)
            return


if __name__ == "__main__":
    main()
