#!/usr/bin/env python3
"""Serve a synthetic LiME image (one range of SIZE bytes) to every connection,
many at once (one thread each): the fleet benchmark's N simulated targets all
read from here through their own SSH sessions.

Usage: lime_source_many.py PORT SIZE_BYTES
"""
import socket
import socketserver
import struct
import sys

port, size = int(sys.argv[1]), int(sys.argv[2])
header = struct.pack("<IIQQQ", 0x4C694D45, 1, 0x100000, 0x100000 + size - 1, 0)
block = bytes(range(256)) * 4096  # 1 MiB, not all zeros


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            self.request.sendall(header)
            left = size
            view = memoryview(block)
            while left:
                n = min(left, len(block))
                self.request.sendall(view[:n])
                left -= n
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


with Server(("127.0.0.1", port), Handler) as server:
    print("ready", flush=True)
    server.serve_forever()
