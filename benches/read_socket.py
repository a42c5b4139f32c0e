#!/usr/bin/env python3
"""The OpenSSH reference reader: connect to HOST:PORT and copy everything to FILE."""
import socket
import sys

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port))
total = 0
with open(path, "wb", buffering=0) as out:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        out.write(view[:n])
        total += n
    import os
    os.fsync(out.fileno())
print(total)
