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
    netnat-full netnat-1 with `header-only off` (every packet verdicted with its payload)
    netnat-offload  netnat-1 with `offload on` (flows handed to the kernel after their start)
    netnat-base (with --baseline PATH) netnat-1 run by another netnat binary, an earlier build:
                before/after a change, measured interleaved in the same run

Runs stdlib only. Started by bench/run (which installs iperf3 etc. and builds netnat); see
bench/README.md. The traffic tools of the latency and connection-rate tests are traffic.py; the
table, the spread and the targets are made by report.py.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import report  # bench/report.py, beside this file (the script's directory is on sys.path)

SRV = "192.168.77.10"
APP = "10.99.1.80"
IPERF_APP, IPERF_ACT = 15201, 5201
RR_APP, RR_ACT = 15202, 5202
QUEUE = 4747
CRR_APP, CRR_ACT = 15203, 5203
TESTS = ["tcp_fwd", "tcp_rev", "udp_rate", "udp_overload", "rr_tcp", "rr_udp", "crr"]
PATHS = ["plain", "kernel", "netnat-1", "netnat-10k", "netnat-full", "netnat-offload",
         "netnat-base"]
# The setting each optional netnat path writes into its configuration; the path runs only with
# a binary that accepts it (checked with `netnat check` before the first round).
PATH_SETTING = {"netnat-full": "header-only off", "netnat-offload": "offload on"}
HERE = os.path.dirname(os.path.abspath(__file__))
TRAFFIC = os.path.join(HERE, "traffic.py")

# ---------------------------------------------------------------------------------------------
# Helpers


class BenchError(Exception):
    pass


def log(*a):
    print("..", *a, file=sys.stderr, flush=True)


def proc_cpu_s(pid):
    """(utime, stime) of the whole process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def machine_ticks(text=None):
    """(busy, total) jiffies over all CPUs, from the `cpu` line of /proc/stat (or `text`).
    Busy is user + nice + system + irq + softirq: the kernel's forwarding work, done in softirq
    on whichever CPU, is in it. Idle, iowait and steal (time the hypervisor gave to other
    guests) are not; guest time is already counted in user."""
    if text is None:
        with open("/proc/stat") as f:
            text = f.readline()
    v = [int(x) for x in text.split()[1:9]]
    v += [0] * (8 - len(v))
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, sum(v)


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
        self.left_out = {}

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
        # The client's ports: the connection-rate test opens tens of thousands of connections
        # to one address and closes first, so its ports sit in TIME_WAIT; reusing one that has
        # been there for a second (timestamps tell the connections apart) keeps ports free.
        self.at("cli", ["sysctl", "-qw", "net.ipv4.ip_local_port_range=10240 65000"])
        self.at("cli", ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
        # The latency echo server and the connection-rate server, shared by every path.
        for name, argv in (("latency echo server", ["rr-server", SRV, str(RR_ACT)]),
                           ("connection-rate server",
                            ["crr-server", SRV, str(CRR_ACT), str(self.a.crr_procs)])):
            p = self.spawn("srv", [sys.executable, TRAFFIC] + argv, stdout=subprocess.PIPE,
                           text=True)
            line = self.readline_bounded(p.stdout, 10)
            if "ready" not in (line or ""):
                raise BenchError(f"{name} did not start")
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

    # -- the paths --------------------------------------------------------------------------
    def config_text(self, path, services):
        lines = [f"queue {QUEUE}"] + ([f"queues {self.a.queues}"] if self.a.queues else []) \
            + ([f"busy-poll {self.a.busy_poll}"] if self.a.busy_poll is not None else []) \
            + ([PATH_SETTING[path]] if path in PATH_SETTING else [])
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

    def accepts(self, binary, setting):
        """None if `binary` accepts `setting` in a configuration, else its complaint. Checked
        with `netnat check` in the router namespace on a scratch file: only the line of the
        setting counts (check also reports the system, e.g. interfaces that are absent)."""
        conf = os.path.join(self.work, "setting-check.conf")
        with open(conf, "w") as f:
            f.write(f"queue {QUEUE}\n{setting}\n")
        r = self.at("rtr", [binary, "check", "--config", conf], check=False, timeout=20)
        out = r.stdout + r.stderr
        bad = [ln.strip() for ln in out.splitlines() if f"{conf}:2:" in ln]
        if bad:
            return bad[0].replace(conf, "<config>")
        if r.returncode == 2:  # the configuration's exit status, with no line of ours named
            return out.strip().splitlines()[-1] if out.strip() else "exit status 2"
        return None

    def choose_paths(self):
        """Checks the optional netnat paths against the binary: explicitly asked for and
        rejected fails the run; in the default list, a rejected one is left out with one line
        saying why."""
        for path, setting in PATH_SETTING.items():
            if path not in self.a.paths:
                continue
            why = self.accepts(self.binary(path), setting)
            if why is None:
                continue
            if self.a.paths_given:
                raise BenchError(f"path {path}: {self.binary(path)} rejects the setting "
                                 f"`{setting}` ({why}); this path needs a netnat that has it")
            self.a.paths.remove(path)
            print(f"netbench: path {path} left out: the binary rejects `{setting}` ({why})",
                  file=sys.stderr, flush=True)
            self.left_out[path] = f"binary rejects `{setting}`: {why}"

    class Active:
        """What one path did during one test: target address and, for netnat, its costs."""
        def __init__(self, host, ports):
            self.host, self.ports = host, ports
            self.nn = None
            self.machine_busy_pct = None
            self.machine_busy_s = None

    def activate(self, path, services):
        """Context manager: sets the router up for `path` with `services`, tears it down."""
        bench = self

        class Ctx:
            def __enter__(ctx):
                # Every path starts with an empty conntrack table in the router: the
                # connection-rate test leaves tens of thousands of entries behind.
                bench.at("rtr", ["conntrack", "-F"], check=False)
                # The machine's CPU (ctx.m0) is counted from the moment the path is set up
                # (netnat's start and the kernel table's load are not in it) to __exit__.
                if path == "plain":
                    ctx.act = Bench.Active(SRV, {app: act for _, app, act in services})
                    ctx.m0 = machine_ticks()
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
                    ctx.m0 = machine_ticks()
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
                ctx.m0 = machine_ticks()
                return ctx.act

            def __exit__(ctx, et, ev, tb):
                m1 = machine_ticks()
                dt = m1[1] - ctx.m0[1]
                ctx.act.machine_busy_pct = 100 * (m1[0] - ctx.m0[0]) / dt if dt else None
                ctx.act.machine_busy_s = (m1[0] - ctx.m0[0]) / os.sysconf("SC_CLK_TCK")
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
        gb = e["bytes"] / 1e9
        res = {"gbps": e["bits_per_second"] / 1e9, "bytes": e["bytes"],
               "machine_busy_pct": act.machine_busy_pct, "machine_busy_s": act.machine_busy_s,
               "machine_cpu_s_per_gb": act.machine_busy_s / gb if gb else None}
        if act.nn:
            res.update(act.nn)
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
        r["machine_busy_s"] = act.machine_busy_s
        mp = r["wire_rx"] / 1e6
        r["machine_cpu_s_per_mpkt"] = act.machine_busy_s / mp if mp else None
        if act.nn:
            r.update(act.nn)
            mp = act.nn["packets"] / 1e6
            r["cpu_s_per_mpkt"] = act.nn["cpu_s"] / mp if mp else None
            r["cpu_pct"] = 100 * act.nn["cpu_s"] / act.nn["wall_s"]
            r["user_pct"] = 100 * act.nn["user_s"] / act.nn["wall_s"]
        return r

    def rr(self, path, proto):
        with self.activate(path, [(proto, RR_APP, RR_ACT)]) as act:
            r = self.at("cli", [sys.executable, TRAFFIC, "rr-client", proto, act.host, str(act.ports[RR_APP]),
                                str(self.a.rr_count), str(self.a.rr_warmup),
                                str(self.a.rr_deadline)],
                        timeout=90, check=False)
            if r.returncode != 0:
                raise BenchError(f"latency client failed: {r.stdout}{r.stderr}")
            res = json.loads(r.stdout)
        if act.nn:
            res.update(act.nn)
        return res

    def crr(self, path):
        """New TCP connections per second: `crr_procs` client processes each doing connect,
        32-byte request, 64-byte answer, close, one after the other, for crr_time seconds."""
        with self.activate(path, [("tcp", CRR_APP, CRR_ACT)]) as act:
            r = self.at("cli", [sys.executable, TRAFFIC, "crr-client", act.host,
                                str(act.ports[CRR_APP]), str(self.a.crr_procs),
                                str(self.a.crr_time)],
                        timeout=self.a.crr_time + 30, check=False)
            if r.returncode != 0:
                raise BenchError(f"connection-rate client failed: {r.stdout}{r.stderr}")
            res = json.loads(r.stdout)
        if res["done"] == 0:
            raise BenchError(f"no connection completed via {path}: {res['errors']}")
        res["machine_busy_pct"] = act.machine_busy_pct
        res["machine_busy_s"] = act.machine_busy_s
        res["machine_cpu_us_per_conn"] = 1e6 * act.machine_busy_s / res["done"]
        if act.nn:
            res.update(act.nn)
            res["cpu_us_per_conn"] = 1e6 * act.nn["cpu_s"] / res["done"]
            res["cpu_pct"] = 100 * act.nn["cpu_s"] / act.nn["wall_s"]
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
            ("crr", self.crr),
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
                                 "p99_us", "cpu_pct", "conn_per_s")}
                    log(f"   {brief}")


# ---------------------------------------------------------------------------------------------
# The report's header (the table itself is report.py's)


def header(b, info):
    a = b.a
    L = ["netnat benchmark — plain routing vs kernel dnat vs netnat (side by side, one run)",
         f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, "
         f"loadavg {info['loadavg_start']} at start, {info['loadavg_end']} at end",
         f"netnat:  {info['netnat']} ({info['netnat_version']}), queues {a.queues or 'auto'}, "
         f"busy-poll {'default' if a.busy_poll is None else a.busy_poll} µs",
         f"mode:    {info['mode']}, {info['rounds']} round(s) interleaved, medians shown; "
         f"bulk {a.bulk_time}s, UDP step {a.udp_step_time}s, overload "
         f"{a.overload_pps / 1e3:.0f} kpps offered for {a.overload_time}s, RR {a.rr_count} "
         f"round trips of 64 B (at most {a.rr_deadline}s), connection rate {a.crr_time}s with "
         f"{a.crr_procs} client and {a.crr_procs} server processes; loss-free = loss ≤ "
         f"{a.loss_threshold}%; wall time {info['wall_s']:.0f}s"]
    for path, why in b.left_out.items():
        L.append(f"left out: {path} ({why})")
    return L


def main():
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
                         "netnat-full and netnat-offload when the binary accepts their "
                         "setting, netnat-base only with --baseline)")
    ap.add_argument("--queues",
                    help="netnat's `queues` setting, 1-64 or auto (default: not set, which is "
                         "auto: one per CPU)")
    ap.add_argument("--busy-poll", type=int,
                    help="netnat's `busy-poll` setting in µs (default: not set, which is 50)")
    ap.add_argument("--streams", type=int, default=1,
                    help="parallel TCP streams of the bulk tests (iperf3 -P, default 1)")
    ap.add_argument("--crr-procs", type=int, default=4,
                    help="processes of the connection-rate client and of its server "
                         "(default 4)")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help="comma-separated subset of " + ",".join(TESTS))
    a = ap.parse_args()
    if a.quick:
        a.rounds = a.rounds or 1
        a.bulk_time, a.udp_step_time, a.overload_time = 2, 1, 2
        a.rr_count, a.rr_warmup, a.bisect_steps, a.rr_deadline = 2000, 200, 2, 5
        a.crr_time = 2
    else:
        a.rounds = a.rounds or 5
        a.bulk_time, a.udp_step_time, a.overload_time = 10, 2, 5
        a.rr_count, a.rr_warmup, a.bisect_steps, a.rr_deadline = 20000, 1000, 4, 20
        a.crr_time = 5
    a.udp_start, a.udp_max, a.overload_pps = 20000, 2_000_000, 2_000_000
    a.tests = [t for t in a.tests.split(",") if t]
    if any(t not in TESTS for t in a.tests):
        ap.error(f"--tests: choose among {TESTS}")
    a.paths_given = a.paths is not None
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
    for tool in ("ip", "nft", "iperf3", "ss", "ping", "conntrack"):
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
        b.choose_paths()
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
    paths = [p for p in PATHS if p in a.paths]
    rows = report.summarize(b.results, b.ready, b.hwm, paths)
    tg = report.targets(rows, b.results, b.ready, b.hwm, paths)
    print(report.render(rows, tg, paths, header(b, info)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "settings": {
                k: getattr(a, k) for k in ("quick", "rounds", "services", "loss_threshold",
                                           "bulk_time", "udp_step_time", "overload_time",
                                           "overload_pps", "rr_count", "rr_warmup", "rr_deadline",
                                           "udp_start", "bisect_steps", "crr_time",
                                           "crr_procs", "paths")},
                "left_out": b.left_out, "figures": rows, "targets": tg, "runs": b.results,
                "ready_s": b.ready, "vmhwm_kib": b.hwm}, f, indent=1)
        log(f"JSON written to {a.json}")


if __name__ == "__main__":
    main()
