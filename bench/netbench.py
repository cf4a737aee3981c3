#!/usr/bin/python3
"""netnat benchmark: plain routing, the kernel's own dnat and netnat, side by side in one run.

Topology (throwaway namespaces named nnb<pid>-cli/-rtr/-srv; nothing in the host namespace):

    cli eth0 10.99.1.2/24 ── rtr pub0 10.99.1.1/24 + 10.99.1.80/24 | rtr priv0 192.168.77.1/24
                                                                   ── srv eth0 192.168.77.10/24

Paths, each measured with the same client, server and tools; only the address the client talks
to and what the router does differ:
    plain       client → 192.168.77.10:<act port>, plain forwarding, no nftables at all
    kernel      client → 10.99.1.80:<app port>, one nft `dnat to 192.168.77.10:<act port>` rule
                per measured service (replies un-NATed by conntrack)
    netnat-1    client → 10.99.1.80:<app port>, netnat with just the measured service(s)
    netnat-10k  the same with 10,000 services configured, the measured ones last in the file
    netnat-base (with --baseline PATH) netnat-1 run by another netnat binary, an earlier build:
                before/after a change, measured interleaved in the same run

Runs stdlib only. Started by bench/run (which installs iperf3 etc. and builds netnat); see
bench/README.md. Internal subcommands `_rr-server` and `_rr-client` are the latency tool.
"""

import argparse
import gc
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SRV = "192.168.77.10"
APP = "10.99.1.80"
IPERF_APP, IPERF_ACT = 15201, 5201
RR_APP, RR_ACT = 15202, 5202
QUEUE = 4747
RR_SIZE = 64
TESTS = ["tcp_fwd", "tcp_rev", "udp_rate", "udp_overload", "rr_tcp", "rr_udp"]
PATHS = ["plain", "kernel", "netnat-1", "netnat-10k", "netnat-base"]

# ---------------------------------------------------------------------------------------------
# Latency tool: echo server and sequential round-trip client (identical for every path)


def rr_server(port):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((SRV, port))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((SRV, port))

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
# Helpers


class BenchError(Exception):
    pass


def log(*a):
    print("..", *a, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def proc_cpu_s(pid):
    """(utime, stime) of the whole process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def machine_ticks():
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def queue_stats(pid, queue):
    """The rows of nfnetlink_queue for netnat's queues (`queue` and the ones after it, one per
    consumer thread), summed, read in netnat's namespace (via its /proc). None if none is
    bound."""
    total = None
    try:
        with open(f"/proc/{pid}/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                v = line.split()
                if queue <= int(v[0]) < queue + 64:
                    row = {"queue_total": int(v[2]), "queue_dropped": int(v[5]),
                           "user_dropped": int(v[6]), "id_sequence": int(v[7]), "queues": 1}
                    total = row if total is None else {k: total[k] + row[k] for k in row}
    except OSError:
        pass
    return total


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "loadavg_start": load}


# ---------------------------------------------------------------------------------------------
# The bench


class Bench:
    def __init__(self, args):
        self.a = args
        self.tag = f"nnb{os.getpid()}"
        self.ns = {k: f"{self.tag}-{k}" for k in ("cli", "rtr", "srv")}
        self.procs = []
        self.work = tempfile.mkdtemp(prefix="netnat-bench.")
        self.ready = {p: [] for p in PATHS if p.startswith("netnat")}
        self.hwm = {p: 0 for p in PATHS if p.startswith("netnat")}
        self.results = {}
        self.made_ns = []
        self.starts = 0

    def binary(self, path):
        """The netnat binary that runs `path`."""
        return self.a.baseline if path == "netnat-base" else self.a.netnat

    # -- processes, always bounded in time --------------------------------------------------
    def sh(self, argv, timeout=30, check=True, input=None):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               input=input, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out after {timeout}s: {' '.join(argv)}")
        if check and r.returncode != 0:
            raise BenchError(f"failed ({r.returncode}): {' '.join(argv)}\n{r.stdout}{r.stderr}")
        return r

    def at(self, ns, argv, **kw):
        return self.sh(["ip", "netns", "exec", self.ns[ns]] + argv, **kw)

    def spawn(self, ns, argv, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[ns]] + argv,
                             start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, wait=10):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    # -- topology ---------------------------------------------------------------------------
    def setup(self):
        for ns in self.ns.values():
            if self.sh(["ip", "netns", "pids", ns], check=False).returncode == 0:
                raise BenchError(f"namespace {ns} already exists")
        for k, ns in self.ns.items():
            self.sh(["ip", "netns", "add", ns])
            self.made_ns.append(ns)
            self.at(k, ["ip", "link", "set", "lo", "up"])
        c, r, s = self.ns["cli"], self.ns["rtr"], self.ns["srv"]
        self.sh(["ip", "-n", r, "link", "add", "pub0", "type", "veth", "peer", "name", "eth0",
                 "netns", c])
        self.sh(["ip", "-n", r, "link", "add", "priv0", "type", "veth", "peer", "name", "eth0",
                 "netns", s])
        self.sh(["ip", "-n", c, "addr", "add", "10.99.1.2/24", "dev", "eth0"])
        self.sh(["ip", "-n", r, "addr", "add", "10.99.1.1/24", "dev", "pub0"])
        self.sh(["ip", "-n", r, "addr", "add", "10.99.1.80/24", "dev", "pub0"])
        self.sh(["ip", "-n", r, "addr", "add", "192.168.77.1/24", "dev", "priv0"])
        self.sh(["ip", "-n", s, "addr", "add", f"{SRV}/24", "dev", "eth0"])
        for ns, dev in ((c, "eth0"), (s, "eth0"), (r, "pub0"), (r, "priv0")):
            self.sh(["ip", "-n", ns, "link", "set", dev, "up"])
        self.sh(["ip", "-n", c, "route", "add", "default", "via", "10.99.1.1"])
        self.sh(["ip", "-n", s, "route", "add", "default", "via", "192.168.77.1"])
        self.at("rtr", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # Counters of the UDP test datagrams on both ends (no ct expression: no conntrack).
        self.at("cli", ["nft", "-f", "-"], input=(
            "table ip nnbench_count {\n chain out {\n"
            "  type filter hook output priority 0; policy accept;\n"
            f"  udp dport {{ {IPERF_ACT}, {IPERF_APP} }} counter\n }}\n}}\n"))
        self.at("srv", ["nft", "-f", "-"], input=(
            "table ip nnbench_count {\n chain in {\n"
            "  type filter hook input priority 0; policy accept;\n"
            f"  udp dport {IPERF_ACT} counter\n }}\n}}\n"))
        # The latency echo server, shared by every path.
        p = self.spawn("srv", [sys.executable, os.path.abspath(__file__), "_rr-server",
                               str(RR_ACT)], stdout=subprocess.PIPE, text=True)
        self.rr_srv = p
        line = self.readline_bounded(p.stdout, 10)
        if "ready" not in (line or ""):
            raise BenchError("latency echo server did not start")
        # Neighbours resolved before anything is timed.
        self.at("cli", ["ping", "-c1", "-W2", SRV], check=False)
        self.at("cli", ["ping", "-c1", "-W2", APP], check=False)

    def readline_bounded(self, f, timeout):
        out = []
        t = threading.Thread(target=lambda: out.append(f.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return out[0] if out else None

    def cleanup(self):
        for p in list(self.procs):
            try:
                self.stop(p, signal.SIGKILL, 5)
            except Exception:
                pass
        for ns in self.made_ns:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                               timeout=10)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in self.made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(self.work, ignore_errors=True)
        log(f"cleaned up (namespaces {self.tag}-* removed)")

    # -- the three paths --------------------------------------------------------------------
    def config_text(self, path, services):
        lines = [f"queue {QUEUE}"] + ([f"queues {self.a.queues}"] if self.a.queues else []) \
            + ([f"busy-poll {self.a.busy_poll}"] if self.a.busy_poll is not None else [])
        if path == "netnat-10k":  # netnat-base: as netnat-1
            fill = self.a.services - len(services)
            half = (fill + 1) // 2
            for i in range(fill):
                proto = "TCP" if i < half else "UDP"
                j = i if i < half else i - half
                lines.append(f"service pub0 port {APP} {10000 + j} {proto} {SRV} {20000 + j}")
        for proto, app, act in services:
            lines.append(f"service pub0 port {APP} {app} {proto.upper()} {SRV} {act}")
        return "\n".join(lines) + "\n"

    class Active:
        """What one path did during one test: target address and, for netnat, its costs."""
        def __init__(self, host, ports):
            self.host, self.ports = host, ports
            self.nn = None
            self.machine_busy_pct = None

    def activate(self, path, services):
        """Context manager: sets the router up for `path` with `services`, tears it down."""
        bench = self

        class Ctx:
            def __enter__(ctx):
                ctx.m0 = machine_ticks()
                if path == "plain":
                    ctx.act = Bench.Active(SRV, {app: act for _, app, act in services})
                    return ctx.act
                ctx.act = Bench.Active(APP, {app: app for _, app, act in services})
                if path == "kernel":
                    rules = "\n".join(
                        f"iifname pub0 ip daddr {APP} {p} dport {app} counter "
                        f"dnat to {SRV}:{act}" for p, app, act in services)
                    bench.at("rtr", ["nft", "-f", "-"], input=(
                        "table ip nnbench_dnat {\n chain pre {\n"
                        "  type nat hook prerouting priority dstnat; policy accept;\n"
                        f"{rules}\n }}\n}}\n"))
                    return ctx.act
                conf = os.path.join(bench.work, f"{path}.conf")
                with open(conf, "w") as f:
                    f.write(bench.config_text(path, services))
                bench.starts += 1
                logpath = os.path.join(bench.work, f"{path}-{bench.starts}.log")
                # netnat appends (O_APPEND) and the bench reads through its own descriptor:
                # a shared file offset would let the two overwrite each other's position.
                with open(logpath, "a") as w:
                    t0 = time.monotonic()
                    p = bench.spawn("rtr", [bench.binary(path), "run", "--config", conf,
                                            "--log-stderr"],
                                    stdout=subprocess.DEVNULL, stderr=w)
                errf = open(logpath)
                ctx.p, ctx.errf = p, errf
                text = ""

                def is_ready(t):
                    # A whole line saying `... ready` or `...: ready: ...` (not "already").
                    return re.search(r"(^|: )ready(:|$)", t[:t.rfind("\n") + 1], re.M)

                while True:
                    text += errf.read()
                    if is_ready(text):
                        break
                    if p.poll() is not None or time.monotonic() - t0 > 60:
                        text += errf.read()
                        if is_ready(text) and p.poll() is None:
                            break
                        raise BenchError(
                            f"netnat did not become ready in {time.monotonic() - t0:.1f}s "
                            f"(exit status {p.poll()}):\n{text[-3000:]}")
                    time.sleep(0.002)
                ready = time.monotonic() - t0
                bench.ready[path].append(ready)
                ctx.cpu0, ctx.q0, ctx.t0 = proc_cpu_s(p.pid), queue_stats(p.pid, QUEUE), \
                    time.monotonic()
                if ctx.q0 is None:
                    raise BenchError(f"netnat is ready but its queue is not bound:\n"
                                     f"{text[-3000:]}")
                ctx.act.nn = {"ready_s": ready}
                return ctx.act

            def __exit__(ctx, et, ev, tb):
                m1 = machine_ticks()
                dt = m1[1] - ctx.m0[1]
                ctx.act.machine_busy_pct = 100 * (m1[0] - ctx.m0[0]) / dt if dt else None
                if path == "kernel":
                    r = bench.at("rtr", ["nft", "list", "table", "ip", "nnbench_dnat"],
                                 check=False)
                    bench.at("rtr", ["nft", "delete", "table", "ip", "nnbench_dnat"],
                             check=False)
                    pk = [int(w.split()[0]) for w in r.stdout.split("packets ")[1:]]
                    if et is None and (not pk or min(pk) == 0):
                        raise BenchError("the kernel dnat rule matched no packet")
                    return False
                if path.startswith("netnat"):
                    p = ctx.p
                    try:
                        if p.poll() is None:
                            cpu, q = proc_cpu_s(p.pid), queue_stats(p.pid, QUEUE)
                            hwm = proc_status_kib(p.pid, "VmHWM") or 0
                            bench.hwm[path] = max(bench.hwm[path], hwm)
                            ctx.act.nn.update({
                                "cpu_s": sum(cpu) - sum(ctx.cpu0),
                                "user_s": cpu[0] - ctx.cpu0[0],
                                "sys_s": cpu[1] - ctx.cpu0[1],
                                "wall_s": time.monotonic() - ctx.t0,
                                "packets": q["id_sequence"] - ctx.q0["id_sequence"],
                                "queue_dropped": q["queue_dropped"] - ctx.q0["queue_dropped"],
                                "user_dropped": q["user_dropped"] - ctx.q0["user_dropped"],
                                "vmhwm_kib": hwm,
                            })
                        elif et is None:
                            with open(ctx.errf.name) as f:
                                raise BenchError(f"netnat died (exit status {p.poll()}):\n"
                                                 f"{f.read()[-3000:]}")
                    finally:
                        bench.stop(p)
                        # netnat leaves its leak guard on purpose; the other paths are
                        # measured without it (and with conntrack only as they need it).
                        bench.at("rtr", [bench.binary(path), "flush"], check=False)
                        ctx.errf.close()
                    if et is None and ctx.act.nn.get("packets", 0) == 0:
                        raise BenchError("netnat's queue saw no packet: the path was not mapped")
                return False

        return Ctx()

    # -- tools ------------------------------------------------------------------------------
    def iperf(self, act, app_port, extra, duration):
        act_port = IPERF_ACT
        srv = self.spawn("srv", ["iperf3", "-s", "-1", "-B", SRV, "-p", str(act_port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5
            while True:
                r = self.at("srv", ["ss", "-Hltn", f"sport = :{act_port}"], check=False)
                if r.stdout.strip():
                    break
                if time.monotonic() > deadline:
                    raise BenchError("iperf3 server did not listen")
                time.sleep(0.02)
            r = self.at("cli", ["iperf3", "-c", act.host, "-p", str(act.ports[app_port]),
                                "-t", str(duration), "-J", "--connect-timeout", "3000"] + extra,
                        timeout=duration + 30, check=False)
            try:
                j = json.loads(r.stdout)
            except json.JSONDecodeError:
                raise BenchError(f"iperf3 gave no JSON: {r.stdout[-2000:]}{r.stderr[-2000:]}")
            if "error" in j:
                raise BenchError(f"iperf3: {j['error']}")
            return j
        finally:
            self.stop(srv, wait=5)

    def bulk(self, path, reverse):
        with self.activate(path, [("tcp", IPERF_APP, IPERF_ACT)]) as act:
            extra = (["-R"] if reverse else []) + (["-P", str(self.a.streams)]
                                                   if self.a.streams > 1 else [])
            j = self.iperf(act, IPERF_APP, extra, self.a.bulk_time)
        e = j["end"]["sum_received"]
        res = {"gbps": e["bits_per_second"] / 1e9, "bytes": e["bytes"],
               "machine_busy_pct": act.machine_busy_pct}
        if act.nn:
            res.update(act.nn)
            gb = e["bytes"] / 1e9
            res["cpu_s_per_gb"] = act.nn["cpu_s"] / gb if gb else None
            res["kpkt_per_gb"] = act.nn["packets"] / 1e3 / gb if gb else None
            res["cpu_pct"] = 100 * act.nn["cpu_s"] / act.nn["wall_s"]
            res["user_pct"] = 100 * act.nn["user_s"] / act.nn["wall_s"]
        return res

    def udp_counted(self, ns):
        r = self.at(ns, ["nft", "list", "table", "ip", "nnbench_count"])
        return int(r.stdout.split("packets ")[1].split()[0])

    def udp_run(self, act, pps, duration):
        """One iperf3 UDP run of 64-byte datagrams offered at `pps`. Path loss is counted by
        nft counters on the endpoints: the client's output of UDP to the test port versus the
        server's input of UDP to it, so that drops in the receiving application's socket
        buffer, the same on every path, do not count as path loss."""
        tx0, rx0 = self.udp_counted("cli"), self.udp_counted("srv")
        j = self.iperf(act, IPERF_APP, ["-u", "-l", "64", "-b", str(int(pps * 64 * 8))],
                       duration)
        tx = self.udp_counted("cli") - tx0
        rx = self.udp_counted("srv") - rx0
        s = j["end"]["sum"]
        secs = s.get("seconds") or duration
        sent = s.get("packets", 0)
        lost = s.get("lost_packets", 0)
        return {"offered_pps": pps, "sent_pps": sent / secs,
                "recv_pps": min(rx, tx) / secs,
                "loss_pct": 100.0 * max(tx - rx, 0) / tx if tx else 100.0,
                "wire_tx": tx, "wire_rx": rx,
                "app_loss_pct": 100.0 * lost / sent if sent else 100.0}

    def udp_services(self):
        # iperf3 -u needs its TCP control connection mapped too.
        return [("tcp", IPERF_APP, IPERF_ACT), ("udp", IPERF_APP, IPERF_ACT)]

    def udp_search(self, path):
        """Highest offered rate (packets/s) delivered with loss ≤ threshold: doubling, then
        bisection (geometric), a bounded number of steps."""
        thr = self.a.loss_threshold
        steps = []
        with self.activate(path, self.udp_services()) as act:

            def step(rate):
                r = self.udp_run(act, rate, self.a.udp_step_time)
                steps.append(r)
                return r, r["loss_pct"] <= thr and r["sent_pps"] >= 0.9 * rate

            # Bracket: double up from the start rate, or halve down if it already fails.
            rate, good, bad = self.a.udp_start, None, None
            r, ok = step(rate)
            if ok:
                good = r
                while rate * 2 <= self.a.udp_max and len(steps) < 10:
                    rate *= 2
                    r, ok = step(rate)
                    if not ok:
                        bad = r
                        break
                    good = r
            else:
                bad = r
                while rate / 2 >= 500 and len(steps) < 10:
                    rate /= 2
                    r, ok = step(rate)
                    if ok:
                        good = r
                        break
                    bad = r
            if good is not None and bad is not None:
                lo, hi = good["offered_pps"], bad["offered_pps"]
                for _ in range(self.a.bisect_steps):
                    mid = (lo * hi) ** 0.5
                    r, ok = step(mid)
                    if ok:
                        lo, good = mid, r
                    else:
                        hi = mid
        if bad is None:
            ended = "max rate"
        elif bad["loss_pct"] > thr:
            ended = "path loss"
        else:
            ended = "send limit"
        res = {"lossfree_pps": good["recv_pps"] if good else 0.0, "ended_by": ended,
               "steps": steps}
        if act.nn:
            res.update(act.nn)
        return res

    def udp_overload(self, path):
        with self.activate(path, self.udp_services()) as act:
            r = self.udp_run(act, self.a.overload_pps, self.a.overload_time)
        r["machine_busy_pct"] = act.machine_busy_pct
        if act.nn:
            r.update(act.nn)
            mp = act.nn["packets"] / 1e6
            r["cpu_s_per_mpkt"] = act.nn["cpu_s"] / mp if mp else None
            r["cpu_pct"] = 100 * act.nn["cpu_s"] / act.nn["wall_s"]
            r["user_pct"] = 100 * act.nn["user_s"] / act.nn["wall_s"]
        return r

    def rr(self, path, proto):
        with self.activate(path, [(proto, RR_APP, RR_ACT)]) as act:
            r = self.at("cli", [sys.executable, os.path.abspath(__file__), "_rr-client",
                                proto, act.host, str(act.ports[RR_APP]),
                                str(self.a.rr_count), str(self.a.rr_warmup),
                                str(self.a.rr_deadline)],
                        timeout=90, check=False)
            if r.returncode != 0:
                raise BenchError(f"latency client failed: {r.stdout}{r.stderr}")
            res = json.loads(r.stdout)
        if act.nn:
            res.update(act.nn)
        return res

    # -- the run ----------------------------------------------------------------------------
    def tests(self):
        return [
            ("tcp_fwd", lambda p: self.bulk(p, False)),
            ("tcp_rev", lambda p: self.bulk(p, True)),
            ("udp_rate", self.udp_search),
            ("udp_overload", self.udp_overload),
            ("rr_tcp", lambda p: self.rr(p, "tcp")),
            ("rr_udp", lambda p: self.rr(p, "udp")),
        ]

    def run(self):
        self.t_start = time.monotonic()
        for rnd in range(self.a.rounds):
            for name, fn in self.tests():
                if name not in self.a.tests:
                    continue
                for path in self.a.paths:
                    log(f"round {rnd + 1}/{self.a.rounds}: {name} via {path}")
                    r = fn(path)
                    self.results.setdefault(name, {}).setdefault(path, []).append(r)
                    brief = {k: round(v, 3) for k, v in r.items()
                             if isinstance(v, float) and k in (
                                 "gbps", "lossfree_pps", "recv_pps", "loss_pct", "median_us",
                                 "p99_us", "cpu_pct")}
                    log(f"   {brief}")


# ---------------------------------------------------------------------------------------------
# Report


def agg(results, test, path, key):
    runs = results.get(test, {}).get(path, [])
    return median([r.get(key) for r in runs]) if runs else None


def summarize(b):
    R = b.results
    rows = []  # (label, unit, {path: value}, kind) kind: 'hi' higher is better, 'lo' lower

    def row(label, unit, test, key, kind, scale=1.0, paths=PATHS):
        vals = {}
        for p in paths:
            v = agg(R, test, p, key)
            vals[p] = v * scale if v is not None else None
        rows.append({"figure": label, "unit": unit, "values": vals, "better": kind,
                     "test": test, "key": key})

    row("TCP bulk client→server", "Gbit/s", "tcp_fwd", "gbps", "hi")
    row("TCP bulk server→client", "Gbit/s", "tcp_rev", "gbps", "hi")
    row("UDP 64 B loss-free rate", "kpps", "udp_rate", "lossfree_pps", "hi", 1e-3)
    vals = {}
    for p in PATHS:
        ends = [r.get("ended_by") for r in R.get("udp_rate", {}).get(p, [])]
        vals[p] = max(set(ends), key=ends.count) if ends else None
    rows.append({"figure": "UDP loss-free search stopped by", "unit": "most runs",
                 "values": vals, "better": "", "test": "udp_rate", "key": "ended_by"})
    row("UDP 64 B overload: sent", "kpps", "udp_overload", "sent_pps", "hi", 1e-3)
    row("UDP 64 B overload: delivered", "kpps", "udp_overload", "recv_pps", "hi", 1e-3)
    row("UDP 64 B overload: loss", "%", "udp_overload", "loss_pct", "lo")
    row("TCP RR latency median", "µs", "rr_tcp", "median_us", "lo")
    row("TCP RR latency p99", "µs", "rr_tcp", "p99_us", "lo")
    row("UDP RR latency median", "µs", "rr_udp", "median_us", "lo")
    row("UDP RR latency p99", "µs", "rr_udp", "p99_us", "lo")
    row("machine CPU busy, bulk client→server", "% of all", "tcp_fwd", "machine_busy_pct", "")
    row("machine CPU busy, bulk server→client", "% of all", "tcp_rev", "machine_busy_pct", "")
    row("machine CPU busy, UDP overload", "% of all", "udp_overload", "machine_busy_pct", "")
    nnp = [p for p in PATHS if p.startswith("netnat")]
    row("netnat queued packets per GB, client→server", "k", "tcp_fwd", "kpkt_per_gb", "lo",
        paths=nnp)
    row("netnat queued packets per GB, server→client", "k", "tcp_rev", "kpkt_per_gb", "lo",
        paths=nnp)
    row("netnat CPU per GB, client→server", "s/GB", "tcp_fwd", "cpu_s_per_gb", "lo", paths=nnp)
    row("netnat CPU per GB, server→client", "s/GB", "tcp_rev", "cpu_s_per_gb", "lo", paths=nnp)
    row("netnat CPU, bulk client→server", "% of 1 CPU", "tcp_fwd", "cpu_pct", "lo", paths=nnp)
    row("netnat CPU, bulk server→client", "% of 1 CPU", "tcp_rev", "cpu_pct", "lo", paths=nnp)
    row("  of which user space, client→server", "% of 1 CPU", "tcp_fwd", "user_pct", "lo",
        paths=nnp)
    row("  of which user space, server→client", "% of 1 CPU", "tcp_rev", "user_pct", "lo",
        paths=nnp)
    row("netnat CPU per Mpkt (UDP overload)", "s/Mpkt", "udp_overload", "cpu_s_per_mpkt", "lo",
        paths=nnp)
    row("netnat CPU, UDP overload", "% of 1 CPU", "udp_overload", "cpu_pct", "lo", paths=nnp)
    row("  of which user space, UDP overload", "% of 1 CPU", "udp_overload", "user_pct", "lo",
        paths=nnp)
    # Queue drops summed over every run of every test.
    for key, label in (("queue_dropped", "queue full drops, all runs"),
                       ("user_dropped", "netlink send-fail drops, all runs")):
        vals = {}
        for p in nnp:
            vals[p] = sum(r.get(key, 0) for t in R.values() for r in t.get(p, []))
        rows.append({"figure": f"nfnetlink_queue {label}", "unit": "packets", "values": vals,
                     "better": "lo", "test": "*", "key": key})
    rows.append({"figure": "netnat peak RSS (VmHWM)", "unit": "MiB", "better": "lo",
                 "values": {p: b.hwm[p] / 1024 for p in nnp}, "test": "*", "key": "vmhwm"})
    rows.append({"figure": "netnat start → ready, median", "unit": "ms", "better": "lo",
                 "values": {p: (median(b.ready[p]) or 0) * 1e3 for p in nnp},
                 "test": "*", "key": "ready"})
    rows.append({"figure": "netnat start → ready, max", "unit": "ms", "better": "lo",
                 "values": {p: max(b.ready[p] or [0]) * 1e3 for p in nnp},
                 "test": "*", "key": "ready_max"})

    def ratio(x, y):
        if isinstance(x, str) or isinstance(y, str):
            return None
        return x / y if x is not None and y not in (None, 0) else None

    for r in rows:
        v = r["values"]
        if not r["better"]:  # context rows: ratios would mean nothing
            v = {}
        r["ratios"] = {
            "netnat-1/kernel": ratio(v.get("netnat-1"), v.get("kernel")),
            "netnat-10k/kernel": ratio(v.get("netnat-10k"), v.get("kernel")),
            "netnat-10k/netnat-1": ratio(v.get("netnat-10k"), v.get("netnat-1")),
            "kernel/plain": ratio(v.get("kernel"), v.get("plain")),
            "netnat-1/plain": ratio(v.get("netnat-1"), v.get("plain")),
            "netnat-1/netnat-base": ratio(v.get("netnat-1"), v.get("netnat-base")),
        }
    return rows


def targets(rows, b):
    by = {(r["test"], r["key"]): r for r in rows}

    def v(test, key, path):
        return by[(test, key)]["values"].get(path)

    out = []

    def check(name, ok, detail):
        out.append({"target": name, "pass": ok, "detail": detail})

    for t, lab in (("tcp_fwd", "client→server"), ("tcp_rev", "server→client")):
        rr = by[(t, "gbps")]["ratios"]["netnat-1/kernel"]
        check(f"bulk TCP {lab} ≥ 0.8× kernel NAT", rr is not None and rr >= 0.8, fmt_r(rr))
    rr = by[("udp_rate", "lossfree_pps")]["ratios"]["netnat-1/kernel"]
    check("small-packet UDP rate ≥ 0.5× kernel NAT", rr is not None and rr >= 0.5, fmt_r(rr))
    for t, lab in (("rr_tcp", "TCP"), ("rr_udp", "UDP")):
        k, n = v(t, "median_us", "kernel"), v(t, "median_us", "netnat-1")
        d = n - k if None not in (k, n) else None
        check(f"added median {lab} latency ≤ 30 µs over kernel NAT", d is not None and d <= 30,
              f"{d:+.1f} µs" if d is not None else "n/a")
    for t, key, lab in (("tcp_fwd", "gbps", "bulk client→server"),
                        ("tcp_rev", "gbps", "bulk server→client"),
                        ("udp_rate", "lossfree_pps", "UDP loss-free rate")):
        rr = by[(t, key)]["ratios"]["netnat-10k/netnat-1"]
        check(f"10k services {lab} ≥ 0.9× 1 service", rr is not None and rr >= 0.9, fmt_r(rr))
    rmax = max(b.ready["netnat-10k"] or [float("nan")])
    check("install with 10k services ≤ 1 s (worst start → ready)", rmax <= 1.0,
          f"{rmax * 1e3:.0f} ms")
    hwm = b.hwm["netnat-10k"] / 1024
    check("peak RSS ≤ 20 MiB with 10k services", 0 < hwm <= 20, f"{hwm:.1f} MiB")
    return out


def fmt_r(x):
    return "n/a" if x is None else f"{x:.2f}×"


def fmt_v(x):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.3f}"


# Figures whose spread is printed, with the scale of the table's unit.
SPREAD_KEYS = {"gbps": 1.0, "lossfree_pps": 1e-3, "median_us": 1.0, "cpu_s_per_gb": 1.0}


def render(b, rows, tg, info):
    L = []
    L.append("netnat benchmark — plain routing vs kernel dnat vs netnat (side by side, one run)")
    L.append(f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, "
             f"loadavg {info['loadavg_start']} at start, {info['loadavg_end']} at end")
    L.append(f"netnat:  {info['netnat']} ({info['netnat_version']}), "
             f"queues {b.a.queues or 'auto'}, busy-poll "
             f"{'default' if b.a.busy_poll is None else b.a.busy_poll} µs")
    L.append(f"mode:    {info['mode']}, {info['rounds']} round(s) interleaved, medians shown; "
             f"bulk {b.a.bulk_time}s, UDP step {b.a.udp_step_time}s, overload "
             f"{b.a.overload_pps / 1e3:.0f} kpps offered for {b.a.overload_time}s, "
             f"RR {b.a.rr_count} round trips of {RR_SIZE} B (at most {b.a.rr_deadline}s); loss-free = loss ≤ "
             f"{b.a.loss_threshold}%; wall time {info['wall_s']:.0f}s")
    L.append("")
    base = bool(b.a.baseline)
    paths = PATHS if base else PATHS[:-1]
    ratio_keys = ["netnat-1/kernel", "netnat-10k/kernel", "netnat-10k/netnat-1",
                  "netnat-1/plain"] + (["netnat-1/netnat-base"] if base else [])
    heads = ["plain", "kernel", "nn-1", "nn-10k"] + (["nn-base"] if base else []) + \
        ["nn1/kern", "nn10k/kern", "nn10k/nn1", "nn1/plain"] + (["nn1/base"] if base else [])
    w0 = max(len(f"{r['figure']} [{r['unit']}]") for r in rows) + 1
    L.append(f"{'figure [unit]':<{w0}}" + "".join(f"{h:>11}" for h in heads))
    L.append("-" * (w0 + 11 * len(heads)))
    for r in rows:
        v, q = r["values"], r["ratios"]
        cells = [fmt_v(v.get(p)) for p in paths]
        cells += [fmt_r(q[k]) if q[k] is not None else "-" for k in ratio_keys]
        L.append(f"{r['figure'] + ' [' + r['unit'] + ']':<{w0}}" +
                 "".join(f"{c:>11}" for c in cells))
    L.append("")
    L.append("spread over the rounds, min / median / max (the table above shows the medians):")
    for r in rows:
        if r["test"] == "*" or r["key"] not in SPREAD_KEYS:
            continue
        runs = b.results.get(r["test"], {})
        cells = []
        for p in paths:
            xs = [x.get(r["key"]) for x in runs.get(p, [])]
            xs = [x * SPREAD_KEYS[r["key"]] for x in xs if isinstance(x, (int, float))]
            if xs:
                cells.append(f"{p} {fmt_v(min(xs))}/{fmt_v(median(xs))}/{fmt_v(max(xs))}")
        if cells:
            L.append(f"  {r['figure']} [{r['unit']}]: " + ", ".join(cells))
    L.append("")
    L.append("targets (netnat with 1 service unless said):")
    for t in tg:
        L.append(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {t['detail']}")
    return "\n".join(L)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_rr-server":
        return rr_server(int(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "_rr-client":
        _, _, proto, host, port, count, warmup, deadline = sys.argv
        return rr_client(proto, host, int(port), int(count), int(warmup), float(deadline))

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--netnat", required=True, help="the netnat binary to measure")
    ap.add_argument("--baseline", metavar="PATH",
                    help="an earlier netnat binary, measured as path netnat-base (1 service) "
                         "in the same interleaved rounds: before/after a change")
    ap.add_argument("--quick", action="store_true", help="short durations (CI smoke)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    ap.add_argument("--services", type=int, default=10000,
                    help="services in the large configuration (default 10000)")
    ap.add_argument("--loss-threshold", type=float, default=0.0,
                    help="path loss (%%) still counted as loss-free (default 0: none)")
    ap.add_argument("--paths", default=None,
                    help="comma-separated subset of " + ",".join(PATHS) + " (default: all; "
                         "netnat-base only with --baseline)")
    ap.add_argument("--queues",
                    help="netnat's `queues` setting, 1-64 or auto (default: not set, which is "
                         "auto: one per CPU)")
    ap.add_argument("--busy-poll", type=int,
                    help="netnat's `busy-poll` setting in µs (default: not set, which is 50)")
    ap.add_argument("--streams", type=int, default=1,
                    help="parallel TCP streams of the bulk tests (iperf3 -P, default 1)")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help="comma-separated subset of " + ",".join(TESTS))
    a = ap.parse_args()
    if a.quick:
        a.rounds = a.rounds or 1
        a.bulk_time, a.udp_step_time, a.overload_time = 2, 1, 2
        a.rr_count, a.rr_warmup, a.bisect_steps, a.rr_deadline = 2000, 200, 2, 5
    else:
        a.rounds = a.rounds or 5
        a.bulk_time, a.udp_step_time, a.overload_time = 10, 2, 5
        a.rr_count, a.rr_warmup, a.bisect_steps, a.rr_deadline = 20000, 1000, 4, 20
    a.udp_start, a.udp_max, a.overload_pps = 20000, 2_000_000, 2_000_000
    a.tests = [t for t in a.tests.split(",") if t]
    if any(t not in TESTS for t in a.tests):
        ap.error(f"--tests: choose among {TESTS}")
    if a.paths is None:
        a.paths = ",".join(PATHS if a.baseline else PATHS[:-1])
    a.paths = [p for p in a.paths.split(",") if p]
    if any(p not in PATHS for p in a.paths):
        ap.error(f"--paths: choose among {PATHS}")
    if "netnat-base" in a.paths and not a.baseline:
        ap.error("--paths netnat-base needs --baseline PATH")
    a.netnat = os.path.abspath(a.netnat)
    if a.baseline:
        a.baseline = os.path.abspath(a.baseline)
    if os.geteuid() != 0:
        sys.exit("netbench: needs root (network namespaces, nftables, NFQUEUE)")
    for tool in ("ip", "nft", "iperf3", "ss", "ping"):
        if not shutil.which(tool):
            sys.exit(f"netbench: {tool} is missing (bench/run installs it)")

    info = machine()
    info["mode"] = "quick" if a.quick else "full"
    info["rounds"] = a.rounds
    info["netnat"] = a.netnat
    info["baseline"] = a.baseline
    v = subprocess.run([a.netnat, "--version"], capture_output=True, text=True, timeout=10)
    info["netnat_version"] = (v.stdout or v.stderr).strip()
    try:
        g = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)),
                            "describe", "--always", "--dirty"], capture_output=True, text=True,
                           timeout=10)
        info["netnat_version"] += f", tree {g.stdout.strip()}" if g.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        pass

    b = Bench(a)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    t0 = time.monotonic()
    try:
        b.setup()
        b.run()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("interrupted")
        b.cleanup()
        sys.exit(130)
    except BenchError as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log(f"FAILED: {e}")
        b.cleanup()
        sys.exit(1)
    except BaseException:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        b.cleanup()
        raise
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    b.cleanup()
    info["wall_s"] = time.monotonic() - t0
    with open("/proc/loadavg") as f:
        info["loadavg_end"] = " ".join(f.read().split()[:3])
    for p in PATHS:
        if p not in a.paths:
            for t in b.results.values():
                t.setdefault(p, [])
    b.ready.setdefault("netnat-10k", [])
    rows = summarize(b)
    tg = targets(rows, b)
    print(render(b, rows, tg, info))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "settings": {
                k: getattr(a, k) for k in ("quick", "rounds", "services", "loss_threshold",
                                           "bulk_time", "udp_step_time", "overload_time",
                                           "overload_pps", "rr_count", "rr_warmup", "rr_deadline",
                                           "udp_start", "bisect_steps")},
                "figures": rows, "targets": tg, "runs": b.results,
                "ready_s": b.ready, "vmhwm_kib": b.hwm}, f, indent=1)
        log(f"JSON written to {a.json}")


if __name__ == "__main__":
    main()
