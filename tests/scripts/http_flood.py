#!/usr/bin/python3
"""A hostile client of netnat's metrics endpoint, for tests/metrics_live.rs.

usage: http_flood.py ADDR PORT IDLE SECONDS

Keeps IDLE connections open that never send anything (one closed by the server is opened
again, every 0.2 s), and sends one 10 MB request line on a connection of its own (all of it,
or until the server closes that connection). Prints `flooding idle=<n> big_sent=<bytes>
big_answer=<first line of the answer or none>` once both are done, then holds the flood until
SECONDS have passed and prints `done reopened=<n>`. Bounded by SECONDS in every loop.
"""
import select
import socket
import sys
import time

addr, port, idle, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + seconds


def connect():
    s = socket.create_connection((addr, port), timeout=2)
    s.setblocking(False)
    return s


conns = []
while len(conns) < idle and time.monotonic() < deadline:
    try:
        conns.append(connect())
    except OSError:
        time.sleep(0.01)

big = socket.create_connection((addr, port), timeout=2)
line = b"GET /" + b"a" * (10 * 1024 * 1024) + b" HTTP/1.1\r\n\r\n"
sent = 0
answer = b""
big.settimeout(0.5)
while sent < len(line) and time.monotonic() < deadline:
    try:
        sent += big.send(line[sent : sent + 65536])
    except socket.timeout:
        continue
    except OSError:
        break
try:
    big.settimeout(1)
    answer = big.recv(200)
except OSError:
    pass
big.close()
first = answer.split(b"\r\n")[0].decode(errors="replace") or "none"
print(f"flooding idle={len(conns)} big_sent={sent} big_answer={first.replace(' ', '_')}", flush=True)

reopened = 0
while time.monotonic() < deadline:
    r, _, _ = select.select(conns, [], [], 0.2)
    for s in r:
        try:
            gone = s.recv(1) == b""
        except OSError:
            gone = True
        if gone:
            s.close()
            conns.remove(s)
    while len(conns) < idle and time.monotonic() < deadline:
        try:
            conns.append(connect())
            reopened += 1
        except OSError:
            break
print(f"done reopened={reopened}", flush=True)
