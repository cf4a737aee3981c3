#!/usr/bin/python3
"""Sends UDP datagrams larger than the MTU and checks that they come back intact.

usage: udp_big.py DST_ADDR DST_PORT SIZE COUNT [TIMEOUT_S]

For each of COUNT datagrams of SIZE random bytes: sends it from one connected socket, waits
at most TIMEOUT_S (default 2) for the echo, retries once. Prints one line per datagram,
`ok SIZE <sha256>` when the echo is identical, `bad ...` or `timeout` otherwise; exits 0 only
when all were ok.
"""
import hashlib
import os
import socket
import sys

dst, port, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.connect((dst, port))
s.settimeout(timeout)
failed = 0
for i in range(count):
    payload = os.urandom(size)
    result = "timeout"
    for _ in range(2):
        s.send(payload)
        try:
            echo = s.recv(65535)
        except socket.timeout:
            continue
        if echo == payload:
            result = f"ok {size} {hashlib.sha256(payload).hexdigest()}"
        else:
            result = f"bad: sent {size} bytes, got {len(echo)} bytes"
        break
    if not result.startswith("ok"):
        failed += 1
    print(result, flush=True)
sys.exit(1 if failed else 0)
