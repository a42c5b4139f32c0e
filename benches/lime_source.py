#!/usr/bin/env python3
"""Serve a synthetic LiME image (one range of SIZE bytes) to each connection.

A benchmark source that is not emulated, so the tunnel and the sink are what
gets measured. Usage: lime_source.py PORT SIZE_BYTES [--once]
"""
import socket
import struct
import sys

port, size = int(sys.argv[1]), int(sys.argv[2])
once = "--once" in sys.argv
header = struct.pack("<IIQQQ", 0x4C694D45, 1, 0x100000, 0x100000 + size - 1, 0)
block = bytes(range(256)) * 4096  # 1 MiB, not all zeros
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    try:
        conn.sendall(header)
        left = size
        view = memoryview(block)
        while left:
            n = min(left, len(block))
            conn.sendall(view[:n])
            left -= n
    except OSError:
        pass
    finally:
        conn.close()
    if once:
        break
