#!/usr/bin/python3
"""UDP ping-pong client for the leak-guard tests: a flow that keeps going both ways.

usage: udp_pingpong.py DST_ADDR PORT SECONDS [INTERVAL_MS]

Sends a numbered datagram every INTERVAL_MS (default 10) for SECONDS, reads every reply that
arrives meanwhile and prints, at the end, one line:
`sent=<n> received=<m> last_reply_s=<seconds after start of the last reply, or -1>
peers=<ip:port,...>`. Always exits 0: what happened is in the line.
"""
import select
import socket
import sys
import time

dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
interval = (float(sys.argv[4]) if len(sys.argv) > 4 else 10.0) / 1000.0
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.connect((dst, port))
start = time.monotonic()
deadline = start + seconds
sent = received = 0
last = -1.0
peers = set()
next_send = start
while True:
    now = time.monotonic()
    if now >= deadline:
        break
    if now >= next_send:
        try:
            s.send(b"ping %d" % sent)
        except OSError:
            pass  # e.g. ECONNREFUSED from an earlier port unreachable: keep trying
        sent += 1
        next_send += interval
    r, _, _ = select.select([s], [], [], max(0.0, min(next_send, deadline) - time.monotonic()))
    if r:
        try:
            data, peer = s.recvfrom(65535)
        except OSError:
            continue
        received += 1
        last = time.monotonic() - start
        peers.add(f"{peer[0]}:{peer[1]}")
print(f"sent={sent} received={received} last_reply_s={last:.2f} peers={','.join(sorted(peers))}",
      flush=True)
