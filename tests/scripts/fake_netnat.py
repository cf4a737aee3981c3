#!/usr/bin/python3
"""A stand-in for `netnat run`, for checking the test harness itself before the daemon exists.

usage: NETNAT_BIN=tests/scripts/fake_netnat.py cargo test --test datapath

It is NOT netnat: it maps the configured services with the kernel's `dnat` inside a
`table inet netnat` (plus empty chains at prerouting -300 and postrouting 300), prints `ready`,
and deletes its table on SIGTERM/SIGINT. It has no owner flag, so a SIGKILL leaves the table
behind: the SIGKILL test must fail with it, which shows that test can fail.
"""
import signal
import subprocess
import sys
import time

args = sys.argv[1:]
if len(args) < 3 or args[0] != "run" or args[1] != "--config":
    sys.stderr.write("fake netnat: usage: run --config FILE [--log-stderr]\n")
    sys.exit(2)
path = args[2]
rules = []
mark = 0x4E00
with open(path) as f:
    for n, line in enumerate(f, 1):
        w = line.split("#", 1)[0].split()
        if not w:
            continue
        if w[0] == "mark" and len(w) == 2:
            mark = int(w[1], 16)
            continue
        if w[0] == "queue" and len(w) == 2:
            continue
        if w[0] != "service" or len(w) not in (8, 9) or w[2] != "port" or w[5] not in ("TCP", "UDP"):
            sys.stderr.write(f"{path}:{n}: error: not a valid service line: {line.strip()}\n")
            sys.exit(2)
        iface, app, aport, proto, act, cport = w[1], w[3], w[4], w[5].lower(), w[6], w[7]
        v6 = ":" in act
        ipkw = "ip6" if v6 else "ip"
        if app == "*":
            match = f"meta nfproto {'ipv6' if v6 else 'ipv4'} fib daddr . iif type local"
        else:
            match = f"{ipkw} daddr {app}"
        to = f"[{act}]:{cport}" if v6 else f"{act}:{cport}"
        rules.append(
            f'iifname "{iface}" {match} {proto} dport {aport} '
            f"meta mark set meta mark | {mark:#x} dnat {ipkw} to {to}"
        )

if subprocess.run(["nft", "list", "table", "inet", "netnat"], capture_output=True).returncode == 0:
    sys.stderr.write("fake netnat: table inet netnat exists: another instance runs (queue busy)\n")
    sys.exit(1)
body = "\n".join("\t\t" + r for r in rules)
ruleset = f"""table inet netnat {{
\tchain prerouting {{
\t\ttype filter hook prerouting priority -300; policy accept;
\t}}
\tchain postrouting {{
\t\ttype filter hook postrouting priority 300; policy accept;
\t}}
\tchain fake_dnat {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
{body}
\t}}
}}
"""
r = subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, capture_output=True)
if r.returncode != 0:
    sys.stderr.write(f"fake netnat: nft failed: {r.stderr}\n{ruleset}")
    sys.exit(1)

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
sys.stderr.write("fake netnat: rules installed, ready\n")
sys.stderr.flush()
deadline = time.monotonic() + 600
while not stop and time.monotonic() < deadline:
    time.sleep(0.05)
subprocess.run(["nft", "delete", "table", "inet", "netnat"])
sys.stderr.write("fake netnat: table removed, exiting\n")
sys.exit(0)
