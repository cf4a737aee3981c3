#!/usr/bin/python3
"""UDP client for netnat's data-path tests.

usage: udp_client.py DST_ADDR DST_PORT MESSAGE [TIMEOUT_S] [TRIES]

Sends MESSAGE from an unconnected socket and prints the first reply as
`from=<ip> <port> data=<payload>`: the source address is reported, not filtered, so a reply
from the wrong address is seen as such. Retries up to TRIES times (default 3), waiting
TIMEOUT_S each (default 2); prints `timeout` and exits 2 when nothing came back.
"""
import socket
import sys

dst, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
tries = int(sys.argv[5]) if len(sys.argv) > 5 else 3
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(timeout)
for _ in range(tries):
    s.sendto(msg.encode(), (dst, port))
    try:
        data, src = s.recvfrom(65535)
    except socket.timeout:
        continue
    print(f"from={src[0]} {src[1]} data={data.decode(errors='replace')}", flush=True)
    sys.exit(0)
print("timeout", flush=True)
sys.exit(2)
