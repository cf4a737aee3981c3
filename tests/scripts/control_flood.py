#!/usr/bin/env python3
"""Holds N idle connections to a Unix stream socket for at most SECS seconds.

A connection the server closes (or answers) is replaced at once, so the server always faces N
idle peers. Prints `flooding` once N connections were made, and on exit one line
`made M replaced R`. Used by tests/control_flood.rs as an unprivileged user.
"""
import os
import select
import socket
import sys
import time

path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + secs
conns = {}
made = replaced = 0
announced = False
poller = select.poll()


def connect():
    global made
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except OSError:
        # Backlog full (EAGAIN) or the server is gone: try again on the next round.
        s.close()
        return False
    conns[s.fileno()] = s
    poller.register(s.fileno(), select.POLLIN)
    made += 1
    return True


while time.monotonic() < end:
    while len(conns) < n and connect():
        pass
    if made >= n and not announced:
        print("flooding", flush=True)
        announced = True
    for fd, _ in poller.poll(20):
        s = conns.pop(fd, None)
        if s is not None:
            poller.unregister(fd)
            s.close()
            replaced += 1
    if len(conns) >= n:
        time.sleep(0.005)

print(f"made {made} replaced {replaced}", flush=True)
os._exit(0)
