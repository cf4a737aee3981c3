#!/usr/bin/python3
"""Self-test of the bench's parsing and report code on made-up inputs: no root, no namespaces,
nothing measured (a few seconds). Run: python3 bench/selftest.py

What it checks: the /proc/stat parsing (steal is not busy), the connection-rate summary, that
ratios are taken round by round, that every figure gets its min/median/max, the targets of
issue 12 (met, missed, not measured) and that the report renders.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import netbench  # noqa: E402
import report  # noqa: E402
import traffic  # noqa: E402


def bulk(gbps, cpu_gb):
    return {"gbps": gbps, "machine_cpu_s_per_gb": cpu_gb, "machine_busy_pct": 50.0}


class Parsing(unittest.TestCase):
    def test_proc_stat_busy_leaves_out_idle_iowait_steal(self):
        #           user nice sys idle iowait irq softirq steal guest guest_nice
        line = "cpu  100 10 50 1000 20 5 15 300 7 0"
        busy, total = netbench.machine_ticks(line)
        self.assertEqual(busy, 100 + 10 + 50 + 5 + 15)
        self.assertEqual(total, 100 + 10 + 50 + 1000 + 20 + 5 + 15 + 300)

    def test_proc_stat_short_line(self):
        self.assertEqual(netbench.machine_ticks("cpu 1 2 3 4"), (6, 10))

    def test_crr_summary(self):
        w = [{"done": 100, "failed": 1, "errors": {"TimeoutError": 1}, "last": 12.0,
              "slow": 1, "max_us": 250000.0, "times_us": [100.0, 200.0, 300.0]},
             {"done": 50, "failed": 0, "errors": {}, "last": 11.0, "slow": 0,
              "max_us": 900.0, "times_us": [400.0]}]
        s = traffic.crr_summary(w, 10.0, 2)
        self.assertEqual(s["done"], 150)
        self.assertEqual(s["failed"], 1)
        self.assertAlmostEqual(s["conn_per_s"], 150 / 2.0)  # to the last exchange's end
        self.assertEqual(s["conn_median_us"], 300.0)
        self.assertEqual(s["errors"], {"TimeoutError": 1})
        self.assertEqual(s["slow"], 1)


class Report(unittest.TestCase):
    paths = ["plain", "kernel", "netnat-1", "netnat-10k"]

    def results(self):
        # Round 2 is twice as fast on every path: per-round ratios stay 0.9, while a ratio of
        # medians over an odd mix would not.
        return {
            "tcp_fwd": {"plain": [bulk(12, 0.1), bulk(24, 0.1)],
                        "kernel": [bulk(10, 0.2), bulk(20, 0.2)],
                        "netnat-1": [bulk(9, 0.4), bulk(18, 0.4)],
                        "netnat-10k": [bulk(9, 0.4), bulk(17.1, 0.4)]},
            "crr": {"plain": [{"conn_per_s": 6000.0}],
                    "kernel": [{"conn_per_s": 5000.0}],
                    "netnat-1": [{"conn_per_s": 2000.0, "cpu_us_per_conn": 50.0}],
                    "netnat-10k": [{"conn_per_s": 2000.0}]},
            "rr_tcp": {"kernel": [{"median_us": 100.0}, {"median_us": 110.0}],
                       "netnat-1": [{"median_us": 130.0}, {"median_us": 125.0}]},
        }

    def build(self):
        res = self.results()
        ready = {"netnat-1": [0.02], "netnat-10k": [0.1, 0.3]}
        hwm = {"netnat-1": 9 * 1024, "netnat-10k": 16 * 1024}
        rows = report.summarize(res, ready, hwm, self.paths)
        return res, ready, hwm, rows, {(r["test"], r["key"]): r for r in rows}

    def test_ratios_round_by_round_and_spread(self):
        _, _, _, rows, by = self.build()
        g = by[("tcp_fwd", "gbps")]
        self.assertAlmostEqual(g["ratios"]["netnat-1/kernel"], 0.9)
        self.assertAlmostEqual(g["ratio_spread"]["netnat-10k/kernel"]["min"], 0.855)
        self.assertEqual(g["spread"]["kernel"], {"min": 10, "median": 15, "max": 20, "n": 2})
        self.assertAlmostEqual(g["values"]["netnat-1"], 13.5)
        # Every figure with runs has a spread for every path that has runs.
        for r in rows:
            if r["test"] != "*" and r["key"] != "ended_by":
                self.assertTrue(any(r["spread"].values()), r["figure"])
        # Machine CPU per GB is there for every path, kernel and plain included.
        m = by[("tcp_fwd", "machine_cpu_s_per_gb")]
        self.assertEqual(m["values"]["plain"], 0.1)
        self.assertAlmostEqual(m["ratios"]["netnat-1/kernel"], 2.0)
        # A test that was not run has no row.
        self.assertNotIn(("udp_rate", "lossfree_pps"), by)

    def test_targets(self):
        res, ready, hwm, rows, _ = self.build()
        tg = {(t["group"], t["figure"]): t for t in
              report.targets(rows, res, ready, hwm, self.paths)}
        self.assertIs(tg[("queue mode", "bulk TCP client→server")]["met"], True)  # 0.9 ≥ 0.85
        self.assertIs(tg[("queue mode", "new-connection rate")]["met"], False)  # 0.4 < 0.6
        self.assertEqual(tg[("queue mode", "new-connection rate")]["measured"], "0.40×")
        self.assertIsNone(tg[("offload", "bulk TCP client→server")]["met"])  # not run
        lat = tg[("queue mode", "added median TCP request/response latency")]
        self.assertAlmostEqual(lat["value"], 22.5)  # rounds: +30, +15
        self.assertIs(lat["met"], False)
        self.assertIs(tg[("10k services", "start → ready, worst")]["met"], True)
        self.assertIs(tg[("10k services", "peak RSS (VmHWM)")]["met"], True)
        text = report.render(rows, report.targets(rows, res, ready, hwm, self.paths),
                             self.paths, ["header"])
        self.assertIn("nn1/kern", text)
        self.assertIn("min/median/max", text)
        self.assertIn("added median TCP request/response latency", text)


if __name__ == "__main__":
    unittest.main(verbosity=1)
