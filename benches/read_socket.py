#!/usr/bin/env python3
"""The OpenSSH reference reader: connect to HOST:PORT and copy everything to FILE.

With --sha256 it also hashes what it reads (hashlib, OpenSSL's SHA-256), as a
responder piping `ssh -L` into a file and sha256sum would.
"""
import hashlib
import socket
import sys

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
digest = hashlib.sha256() if "--sha256" in sys.argv else None
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
        if digest:
            digest.update(view[:n])
        total += n
    import os, stat
    # A pipe (into `aws s3 cp -`) cannot be synced; a file is, as mshot's is.
    if stat.S_ISREG(os.fstat(out.fileno()).st_mode):
        os.fsync(out.fileno())
print(total, digest.hexdigest() if digest else "", file=sys.stderr if path == "/dev/stdout" else sys.stdout)
