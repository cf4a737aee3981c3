#!/usr/bin/python3
"""The bench's own traffic tools, the same for every path; run as subcommands inside the
namespaces by netbench.py (stdlib only):

    traffic.py rr-server HOST PORT                echo server, TCP and UDP, for the latency test
    traffic.py rr-client tcp|udp HOST PORT COUNT WARMUP DEADLINE_S
    traffic.py crr-server HOST PORT PROCS         connection-rate server: accept, read the
                                                  request, answer, close (PROCS processes)
    traffic.py crr-client HOST PORT PROCS SECONDS connection-rate client (PROCS processes)

Each prints `ready` (servers) or one JSON line (clients). Every loop is bounded: socket
timeouts of at most 2 s, clients stop at their deadline; netbench.py bounds each process in time
as well and kills the servers' process groups when it is done.
"""

import gc
import json
import os
import socket
import sys
import threading
import time

RR_SIZE = 64
# The connection-rate exchange: a short request, a short answer, then the client closes first
# (as an HTTP client does), so TIME_WAIT stays on the client, keyed by the address it talked to.
# Server-side TIME_WAIT would be keyed by the rewritten tuple, the same for every path: a path
# run after another would then hit the previous run's TIME_WAIT sockets with sequence numbers
# and timestamps of another connection (seen here: a tenth of the rate on the second path).
CRR_REQ = 32
CRR_ANS = 64
CRR_TIMEOUT_S = 2.0
# Longer than this, a connection has waited for a retransmission (TCP's minimum RTO is 200 ms).
SLOW_S = 0.2

# ---------------------------------------------------------------------------------------------
# Latency: echo server and sequential round-trip client


def rr_server(host, port):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, port))

    def tcp_conn(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)

    def tcp_loop():
        while True:
            c, _ = tcp.accept()
            threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()

    def udp_loop():
        while True:
            d, a = udp.recvfrom(65536)
            udp.sendto(d, a)

    threading.Thread(target=tcp_loop, daemon=True).start()
    threading.Thread(target=udp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def rr_client(proto, host, port, count, warmup, deadline_s):
    gc.disable()
    msg = b"x" * RR_SIZE
    buf = bytearray(RR_SIZE)
    rtts = []
    lost = 0
    end = time.monotonic() + deadline_s
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=3)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(2)
        view = memoryview(buf)
        for i in range(warmup + count):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            got = 0
            while got < RR_SIZE:
                n = s.recv_into(view[got:])
                if n == 0:
                    raise SystemExit("server closed the connection")
                got += n
            t1 = time.perf_counter_ns()
            if i >= warmup:
                rtts.append(t1 - t0)
            if time.monotonic() > end:
                break
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.settimeout(0.5)
        for i in range(warmup + count):
            t0 = time.perf_counter_ns()
            s.send(msg)
            try:
                s.recv_into(buf)
            except socket.timeout:
                lost += 1
                if lost > 50:
                    raise SystemExit("more than 50 UDP round trips lost")
                continue
            t1 = time.perf_counter_ns()
            if i >= warmup:
                rtts.append(t1 - t0)
            if time.monotonic() > end:
                break
    s.close()
    rtts.sort()
    n = len(rtts)
    print(json.dumps({
        "n": n,
        "lost": lost,
        "median_us": rtts[n // 2] / 1000,
        "p99_us": rtts[min(n - 1, int(n * 0.99))] / 1000,
        "mean_us": sum(rtts) / n / 1000,
    }))


# ---------------------------------------------------------------------------------------------
# New-connection rate: connect, send a short request, read the answer, close


def crr_server(host, port, procs):
    """One listening socket, `procs` forked processes accepting on it (one Python process would
    be the bottleneck long before the router is). Runs until killed (its process group)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(4096)
    answer = b"a" * CRR_ANS
    kids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                crr_serve(ls, answer)
            finally:
                os._exit(0)
        kids.append(pid)
    print("ready", flush=True)
    # A worker that dies takes the server down with it: a silently smaller server would make a
    # slower path.
    os.wait()
    for pid in kids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    sys.exit("connection-rate server: a worker exited")


def recv_count(s, n):
    """Reads up to `n` bytes (fewer if the peer closes first); returns how many came."""
    got = 0
    while got < n:
        d = s.recv(n - got)
        if not d:
            break
        got += len(d)
    return got


def crr_serve(ls, answer):
    gc.disable()
    while True:
        c, _ = ls.accept()
        try:
            c.settimeout(CRR_TIMEOUT_S)
            if recv_count(c, CRR_REQ) == CRR_REQ:
                c.sendall(answer)
                # Wait for the client's close (bounded by the timeout).
                while c.recv(256):
                    pass
        except OSError:
            pass
        finally:
            c.close()


def crr_worker(host, port, t_start, t_end):
    """Sequential exchanges from t_start until t_end (CLOCK_MONOTONIC, shared by all
    processes). Returns the count of complete exchanges, the failures, when the last one ended
    and a sample of the per-connection times (connect to close)."""
    gc.disable()
    req = b"q" * CRR_REQ
    while time.monotonic() < t_start:
        time.sleep(min(0.005, max(0.0, t_start - time.monotonic())))
    done = failed = 0
    times = []
    errors = {}
    last = t_start
    while True:
        t0 = time.monotonic()
        if t0 >= t_end:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(CRR_TIMEOUT_S)
            s.connect((host, port))
            s.sendall(req)
            got = recv_count(s, CRR_ANS)
            if got != CRR_ANS:
                raise OSError(f"answer of {got} bytes")
            done += 1
        except OSError as e:
            failed += 1
            k = type(e).__name__
            errors[k] = errors.get(k, 0) + 1
        finally:
            s.close()
        last = time.monotonic()
        times.append(last - t0)
    # A bounded sample (every k-th connection, in time order) keeps the JSON small.
    step = max(1, len(times) // 5000)
    return {"done": done, "failed": failed, "errors": errors, "last": last,
            "slow": sum(1 for t in times if t > SLOW_S), "max_us": max(times, default=0) * 1e6,
            "times_us": [round(t * 1e6, 1) for t in times[::step]]}


def crr_client(host, port, procs, seconds):
    """`procs` forked workers start together 0.3 s from now and run for `seconds`; prints the
    connection rate over the time from the common start to the last exchange's end."""
    t_start = time.monotonic() + 0.3
    t_end = t_start + seconds
    kids = []
    for _ in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                res = crr_worker(host, port, t_start, t_end)
            except BaseException as e:  # reported, not lost: the parent fails the run
                res = {"crash": repr(e)}
            with os.fdopen(w, "w") as f:
                f.write(json.dumps(res))
            os._exit(0)
        os.close(w)
        kids.append((pid, r))
    res = []
    for pid, r in kids:
        with os.fdopen(r) as f:
            data = f.read()
        os.waitpid(pid, 0)
        res.append(json.loads(data) if data else {"crash": "worker died"})
    crashed = [x["crash"] for x in res if "crash" in x]
    if crashed:
        sys.exit(f"connection-rate client: {crashed}")
    print(json.dumps(crr_summary(res, t_start, procs)))


def crr_summary(res, t_start, procs):
    """The figures of one run from the workers' results (separate so that it can be tested)."""
    done = sum(x["done"] for x in res)
    failed = sum(x["failed"] for x in res)
    span = max(x["last"] for x in res) - t_start
    times = sorted(t for x in res for t in x["times_us"])
    errors = {}
    for x in res:
        for k, v in x["errors"].items():
            errors[k] = errors.get(k, 0) + v
    n = len(times)
    return {"conn_per_s": done / span if span > 0 else 0.0, "done": done, "failed": failed,
            "errors": errors, "seconds": span, "procs": procs,
            "slow": sum(x["slow"] for x in res), "conn_max_us": max(x["max_us"] for x in res),
            "conn_median_us": times[n // 2] if n else None,
            "conn_p99_us": times[min(n - 1, int(n * 0.99))] if n else None}


def main(argv):
    cmd, rest = argv[1], argv[2:]
    if cmd == "rr-server":
        return rr_server(rest[0], int(rest[1]))
    if cmd == "rr-client":
        proto, host, port, count, warmup, deadline = rest
        return rr_client(proto, host, int(port), int(count), int(warmup), float(deadline))
    if cmd == "crr-server":
        return crr_server(rest[0], int(rest[1]), int(rest[2]))
    if cmd == "crr-client":
        return crr_client(rest[0], int(rest[1]), int(rest[2]), float(rest[3]))
    sys.exit(f"traffic.py: unknown subcommand {cmd}")


if __name__ == "__main__":
    main(sys.argv)
