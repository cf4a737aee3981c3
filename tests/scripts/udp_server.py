#!/usr/bin/python3
"""UDP responder for netnat's data-path tests.

usage: udp_server.py BIND_ADDR PORT LOGFILE [LIFETIME_S]

Replies to every datagram with `peer=<ip> <port> echo=<payload>` from the socket bound to
BIND_ADDR:PORT and appends `peer=<ip> <port>` to LOGFILE. Stops after LIFETIME_S (default 300).
"""
import socket
import sys
import time

addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lifetime = float(sys.argv[4]) if len(sys.argv) > 4 else 300.0
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
    line = f"peer={peer[0]} {peer[1]}"
    with open(log, "a") as f:
        f.write(line + "\n")
    s.sendto(f"{line} echo={data.decode(errors='replace')}".encode(), peer)
