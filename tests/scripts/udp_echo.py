#!/usr/bin/python3
"""UDP echo server for the reliability tests.

usage: udp_echo.py BIND_ADDR PORT [LIFETIME_S]

Sends every datagram back, byte for byte, to where it came from, and prints one line per
datagram: `peer=<ip> <port> len=<n>`. Stops by itself after LIFETIME_S (default 120).
"""
import socket
import sys
import time

addr, port = sys.argv[1], int(sys.argv[2])
lifetime = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((addr, port))
print(f"listening on {addr} {port}", flush=True)
deadline = time.monotonic() + lifetime
while time.monotonic() < deadline:
    s.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        break
    print(f"peer={peer[0]} {peer[1]} len={len(data)}", flush=True)
    s.sendto(data, peer)
