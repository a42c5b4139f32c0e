#!/usr/bin/env python3
"""A throttled TCP relay: a slow link for benches/sources.sh.

    throttle_relay.py LISTEN_PORT TARGET_PORT BYTES_PER_SECOND

Listens on 127.0.0.1:LISTEN_PORT, relays each connection to
127.0.0.1:TARGET_PORT, and limits the target-to-client direction (the one
memory flows in) to BYTES_PER_SECOND with a token bucket. The other
direction is not limited (SSH requests and window updates are small).
"""
import socket
import sys
import threading
import time


def pump(src, dst, rate):
    tokens, last = 0.0, time.monotonic()
    burst = max(rate / 20, 65536)
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if rate:
                while True:
                    now = time.monotonic()
                    tokens = min(burst, tokens + (now - last) * rate)
                    last = now
                    if tokens >= len(data):
                        tokens -= len(data)
                        break
                    time.sleep((len(data) - tokens) / rate)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    listen_port, target_port, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(8)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        threading.Thread(target=pump, args=(client, upstream, 0), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, rate), daemon=True).start()


if __name__ == "__main__":
    main()
