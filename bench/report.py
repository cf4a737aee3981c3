"""The benchmark's report: from the runs of every round to the table (medians, ratios), the
spread (min/median/max of every figure) and the targets of issue 12. Pure functions of the
results (stdlib only, nothing run), so that bench/selftest.py can check them on made-up runs.

A run list `results[test][path]` holds one dict per round, in round order: the bench runs every
path once per test in each round, so index i of two paths is the same round, and a ratio of two
paths is taken round by round (the paths of one round share the machine's noise) before its
median is shown.
"""

import statistics

# Short column names of the paths, in the order of the table.
SHORT = {"plain": "plain", "kernel": "kernel", "netnat-1": "nn-1", "netnat-10k": "nn-10k",
         "netnat-full": "nn-full", "netnat-offload": "nn-offl", "netnat-base": "nn-base"}
NETNAT = [p for p in SHORT if p.startswith("netnat")]


def median(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def per_run(results, test, path, key, scale=1.0):
    """The figure `key` of every round of `test` on `path` (None where a round lacks it)."""
    out = []
    for r in results.get(test, {}).get(path, []):
        v = r.get(key)
        out.append(v * scale if isinstance(v, (int, float)) else None)
    return out


def per_round_ratio(xs, ys):
    """x/y round by round, where both exist and y is not 0."""
    return [x / y for x, y in zip(xs, ys) if x is not None and y not in (None, 0)]


def spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def ratio_keys(paths):
    """The ratios shown for the paths that ran: every netnat path to kernel NAT, then 10k to 1
    service, netnat and kernel to plain routing, and netnat to the baseline binary."""
    keys = [f"{p}/kernel" for p in NETNAT if p in paths and "kernel" in paths]
    for a, b in (("netnat-10k", "netnat-1"), ("kernel", "plain"), ("netnat-1", "plain"),
                 ("netnat-1", "netnat-base")):
        if a in paths and b in paths:
            keys.append(f"{a}/{b}")
    return keys


def ratio_head(key):
    a, b = key.split("/")
    short = {"plain": "plain", "kernel": "kern", "netnat-1": "nn1", "netnat-10k": "nn10k",
             "netnat-full": "full", "netnat-offload": "offl", "netnat-base": "base"}
    return f"{short[a]}/{short[b]}"


# The figures, in table order: (label, unit, test, key, better, scale, netnat only).
# better: "hi" higher is better, "lo" lower is better, "" context (no ratios).
FIGURES = [
    ("TCP bulk client→server", "Gbit/s", "tcp_fwd", "gbps", "hi", 1.0, False),
    ("TCP bulk server→client", "Gbit/s", "tcp_rev", "gbps", "hi", 1.0, False),
    ("new TCP connections (connect, request, answer, close)", "conn/s", "crr", "conn_per_s",
     "hi", 1.0, False),
    ("  time per connection, median", "µs", "crr", "conn_median_us", "lo", 1.0, False),
    ("  time per connection, p99", "µs", "crr", "conn_p99_us", "lo", 1.0, False),
    ("  failed connections", "count", "crr", "failed", "lo", 1.0, False),
    ("UDP 64 B loss-free rate", "kpps", "udp_rate", "lossfree_pps", "hi", 1e-3, False),
    ("UDP 64 B overload: sent", "kpps", "udp_overload", "sent_pps", "hi", 1e-3, False),
    ("UDP 64 B overload: delivered", "kpps", "udp_overload", "recv_pps", "hi", 1e-3, False),
    ("UDP 64 B overload: loss", "%", "udp_overload", "loss_pct", "lo", 1.0, False),
    ("TCP RR latency median", "µs", "rr_tcp", "median_us", "lo", 1.0, False),
    ("TCP RR latency p99", "µs", "rr_tcp", "p99_us", "lo", 1.0, False),
    ("UDP RR latency median", "µs", "rr_udp", "median_us", "lo", 1.0, False),
    ("UDP RR latency p99", "µs", "rr_udp", "p99_us", "lo", 1.0, False),
    ("machine busy CPU (all CPUs) per GB, bulk client→server", "s/GB", "tcp_fwd",
     "machine_cpu_s_per_gb", "lo", 1.0, False),
    ("machine busy CPU (all CPUs) per GB, bulk server→client", "s/GB", "tcp_rev",
     "machine_cpu_s_per_gb", "lo", 1.0, False),
    ("machine busy CPU (all CPUs) per connection", "µs", "crr", "machine_cpu_us_per_conn",
     "lo", 1.0, False),
    ("machine busy CPU (all CPUs) per delivered Mpkt, UDP overload", "s/Mpkt", "udp_overload",
     "machine_cpu_s_per_mpkt", "lo", 1.0, False),
    ("machine CPU busy, bulk client→server", "% of all", "tcp_fwd", "machine_busy_pct", "",
     1.0, False),
    ("machine CPU busy, bulk server→client", "% of all", "tcp_rev", "machine_busy_pct", "",
     1.0, False),
    ("machine CPU busy, connection rate", "% of all", "crr", "machine_busy_pct", "", 1.0, False),
    ("machine CPU busy, UDP overload", "% of all", "udp_overload", "machine_busy_pct", "", 1.0,
     False),
    ("netnat queued packets per GB, client→server", "k", "tcp_fwd", "kpkt_per_gb", "lo", 1.0,
     True),
    ("netnat queued packets per GB, server→client", "k", "tcp_rev", "kpkt_per_gb", "lo", 1.0,
     True),
    ("netnat process CPU (utime+stime) per GB, client→server", "s/GB", "tcp_fwd",
     "cpu_s_per_gb", "lo", 1.0, True),
    ("netnat process CPU (utime+stime) per GB, server→client", "s/GB", "tcp_rev",
     "cpu_s_per_gb", "lo", 1.0, True),
    ("netnat process CPU (utime+stime) per connection", "µs", "crr", "cpu_us_per_conn", "lo",
     1.0, True),
    ("netnat CPU, bulk client→server", "% of 1 CPU", "tcp_fwd", "cpu_pct", "lo", 1.0, True),
    ("netnat CPU, bulk server→client", "% of 1 CPU", "tcp_rev", "cpu_pct", "lo", 1.0, True),
    ("  of which user space, client→server", "% of 1 CPU", "tcp_fwd", "user_pct", "lo", 1.0,
     True),
    ("  of which user space, server→client", "% of 1 CPU", "tcp_rev", "user_pct", "lo", 1.0,
     True),
    ("netnat CPU per Mpkt (UDP overload)", "s/Mpkt", "udp_overload", "cpu_s_per_mpkt", "lo",
     1.0, True),
    ("netnat CPU, UDP overload", "% of 1 CPU", "udp_overload", "cpu_pct", "lo", 1.0, True),
    ("  of which user space, UDP overload", "% of 1 CPU", "udp_overload", "user_pct", "lo",
     1.0, True),
]


def summarize(results, ready, hwm, paths):
    """The rows of the table. Each row: figure, unit, test, key, better, values (median per
    path), spread (min/median/max per path), ratios and ratio_spread (per round)."""
    rows = []
    keys = ratio_keys(paths)
    for label, unit, test, key, better, scale, nn_only in FIGURES:
        cols = [p for p in paths if p.startswith("netnat") or not nn_only]
        runs = {p: per_run(results, test, p, key, scale) for p in cols}
        if not any(x is not None for xs in runs.values() for x in xs):
            continue  # a test that was not run
        row = {"figure": label, "unit": unit, "test": test, "key": key, "better": better,
               "values": {p: median(runs[p]) for p in cols},
               "spread": {p: spread(runs[p]) for p in cols}, "ratios": {},
               "ratio_spread": {}}
        if better:  # context rows: ratios would mean nothing
            for k in keys:
                a, b = k.split("/")
                if a in runs and b in runs:
                    rr = per_round_ratio(runs[a], runs[b])
                    row["ratios"][k] = median(rr)
                    row["ratio_spread"][k] = spread(rr)
        rows.append(row)
    if "udp_rate" in results:
        vals = {}
        for p in paths:
            ends = [r.get("ended_by") for r in results["udp_rate"].get(p, [])]
            vals[p] = max(set(ends), key=ends.count) if ends else None
        at = next(i for i, r in enumerate(rows) if r["key"] == "lossfree_pps") + 1
        rows.insert(at, {"figure": "UDP loss-free search stopped by", "unit": "most runs",
                         "values": vals, "better": "", "test": "udp_rate", "key": "ended_by",
                         "spread": {}, "ratios": {}, "ratio_spread": {}})
    nnp = [p for p in paths if p.startswith("netnat")]

    def whole(label, unit, key, vals):
        r = {"figure": label, "unit": unit, "better": "lo", "values": vals, "test": "*",
             "key": key, "spread": {}, "ratio_spread": {}, "ratios": {}}
        for k in keys:
            a, b = k.split("/")
            if a in vals and b in vals and vals[a] is not None and vals[b]:
                r["ratios"][k] = vals[a] / vals[b]
        rows.append(r)

    # Queue drops summed over every run of every test.
    for key, label in (("queue_dropped", "queue full drops, all runs"),
                       ("user_dropped", "netlink send-fail drops, all runs")):
        whole(f"nfnetlink_queue {label}", "packets", key,
              {p: sum(r.get(key, 0) for t in results.values() for r in t.get(p, []))
               for p in nnp})
    whole("netnat peak RSS (VmHWM)", "MiB", "vmhwm", {p: hwm.get(p, 0) / 1024 for p in nnp})
    whole("netnat start → ready, median", "ms", "ready",
          {p: (median(ready.get(p, [])) or 0) * 1e3 for p in nnp})
    whole("netnat start → ready, max", "ms", "ready_max",
          {p: max(ready.get(p) or [0]) * 1e3 for p in nnp})
    return rows


def targets(rows, results, ready, hwm, paths):
    """The targets of issue 12, as rows: group, figure, target, measured (text), met
    (True/False, None when the path was not measured). Ratios are medians of per-round
    ratios, to kernel NAT in the same round (to netnat-1 for the 10k rows)."""
    by = {(r["test"], r["key"]): r for r in rows}
    out = []

    def ratio(test, key, k):
        r = by.get((test, key))
        return r["ratios"].get(k) if r else None

    def add(group, figure, target, value, ok, shown):
        out.append({"group": group, "figure": figure, "target": target, "value": value,
                    "measured": shown if value is not None else "not measured",
                    "met": ok if value is not None else None})

    def at_least(group, figure, test, key, k, bound, inverse=False):
        v = ratio(test, key, k)
        if inverse and v:  # lower is better: the 1-service figure over the 10k one
            v = 1 / v
        add(group, figure, f"≥ {bound:.2f}×", v, v is not None and v >= bound, fmt_r(v))

    bulk = (("tcp_fwd", "bulk TCP client→server"), ("tcp_rev", "bulk TCP server→client"))
    for path, group, b_bulk, b_conn, b_udp in (
            ("netnat-offload", "offload", 1.0, 0.8, 0.9),
            ("netnat-1", "queue mode", 0.85, 0.6, None)):
        k = f"{path}/kernel"
        for test, fig in bulk:
            at_least(group, fig, test, "gbps", k, b_bulk)
        at_least(group, "new-connection rate", "crr", "conn_per_s", k, b_conn)
        if b_udp is not None:
            at_least(group, "64-byte UDP loss-free rate", "udp_rate", "lossfree_pps", k, b_udp)
    for test, proto in (("rr_tcp", "TCP"), ("rr_udp", "UDP")):
        d = [n - k for n, k in zip(per_run(results, test, "netnat-1", "median_us"),
                                   per_run(results, test, "kernel", "median_us"))
             if None not in (n, k)]
        v = median(d)
        add("queue mode", f"added median {proto} request/response latency", "≤ 20 µs", v,
            v is not None and v <= 20, f"{v:+.1f} µs" if v is not None else "")
    k = "netnat-10k/netnat-1"
    for test, key, fig, inv in (
            ("tcp_fwd", "gbps", "bulk TCP client→server", False),
            ("tcp_rev", "gbps", "bulk TCP server→client", False),
            ("crr", "conn_per_s", "new-connection rate", False),
            ("udp_rate", "lossfree_pps", "64-byte UDP loss-free rate", False),
            ("udp_overload", "recv_pps", "64-byte UDP overload delivered", False),
            ("rr_tcp", "median_us", "TCP RR latency (1 service / 10k)", True),
            ("rr_udp", "median_us", "UDP RR latency (1 service / 10k)", True)):
        at_least("10k services (÷ 1 service)", fig, test, key, k, 0.9, inverse=inv)
    big = "netnat-10k" in paths and ready.get("netnat-10k")
    mib = hwm.get("netnat-10k", 0) / 1024 if big else None
    add("10k services", "peak RSS (VmHWM)", "≤ 20 MiB", mib, mib is not None and 0 < mib <= 20,
        f"{mib:.1f} MiB" if mib is not None else "")
    worst = max(ready["netnat-10k"]) if big else None
    add("10k services", "start → ready, worst", "≤ 1 s", worst,
        worst is not None and worst <= 1.0, f"{worst * 1e3:.0f} ms" if worst is not None else "")
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


def fmt_spread(s, fmt=fmt_v):
    return f"{fmt(s['min'])}/{fmt(s['median'])}/{fmt(s['max'])}"


def render(rows, tg, paths, header):
    """The text report: `header` lines, the table of medians and per-round ratio medians, the
    spread of every figure, the targets table."""
    L = list(header) + [""]
    keys = ratio_keys(paths)
    heads = [SHORT[p] for p in paths] + [ratio_head(k) for k in keys]
    w0 = max(len(f"{r['figure']} [{r['unit']}]") for r in rows) + 1
    L.append(f"{'figure [unit]':<{w0}}" + "".join(f"{h:>11}" for h in heads))
    L.append("-" * (w0 + 11 * len(heads)))
    for r in rows:
        cells = [fmt_v(r["values"].get(p)) for p in paths]
        cells += [fmt_r(r["ratios"][k]) if r["ratios"].get(k) is not None else "-"
                  for k in keys]
        L.append(f"{r['figure'] + ' [' + r['unit'] + ']':<{w0}}" +
                 "".join(f"{c:>11}" for c in cells))
    L.append("")
    L.append("spread over the rounds, min/median/max (the table shows the medians; ratios are "
             "taken round by round):")
    for r in rows:
        cells = [f"{SHORT[p]} {fmt_spread(s)}" for p, s in r["spread"].items() if s]
        rs = [f"{ratio_head(k)} {fmt_spread(s, lambda x: f'{x:.2f}')}"
              for k, s in r["ratio_spread"].items() if s and k.endswith("/kernel")]
        if cells:
            L.append(f"  {r['figure'].strip()} [{r['unit']}]: " + ", ".join(cells) +
                     (" | " + ", ".join(rs) if rs else ""))
    L.append("")
    L.append("targets of issue 12 (ratios to kernel NAT in the same round, medians over rounds; "
             "reported, not enforced):")
    cols = [("group", "group"), ("figure", "figure"), ("target", "target"),
            ("measured", "measured"), ("met", "met?")]
    text = [{"group": t["group"], "figure": t["figure"], "target": t["target"],
             "measured": t["measured"],
             "met": {True: "yes", False: "NO", None: "-"}[t["met"]]} for t in tg]
    w = {c: max([len(h)] + [len(t[c]) for t in text]) for c, h in cols}
    L.append("  " + "  ".join(f"{h:<{w[c]}}" for c, h in cols))
    L.append("  " + "  ".join("-" * w[c] for c, _ in cols))
    for t in text:
        L.append("  " + "  ".join(f"{t[c]:<{w[c]}}" for c, _ in cols))
    return "\n".join(L)
