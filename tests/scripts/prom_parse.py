#!/usr/bin/python3
"""Parses Prometheus text exposition format on stdin with prometheus_client's parser (the
one Prometheus's Python client ships), and prints one line per sample:
`name{label="value",...} value`, labels sorted, so that a test compares figures without
trusting netnat's own formatting. Exits 1 with the parser's message on malformed input."""
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
try:
    families = list(text_string_to_metric_families(text))
except Exception as e:  # the parser raises ValueError and others for bad input
    print(f"parse error: {e}", file=sys.stderr)
    sys.exit(1)
names = set()
for f in families:
    if f.name in names:
        print(f"family {f.name} twice", file=sys.stderr)
        sys.exit(1)
    names.add(f.name)
    if not f.documentation:
        print(f"family {f.name} has no HELP", file=sys.stderr)
        sys.exit(1)
    for s in f.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        value = int(s.value) if float(s.value).is_integer() else s.value
        print(f"{s.name}{{{labels}}} {value} {f.type}")
