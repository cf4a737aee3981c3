#!/usr/bin/python3
"""Writes the seed corpora of the `datapath` and `config_to_batch` fuzz targets.

usage: fuzz/seeds.py   (from anywhere; needs scapy, as the tests do: scripts/deps installs it)

The datapath seeds are real packets of the target's fixed services (fuzz_targets/datapath.rs)
in every direction, with the target's 6-byte metadata in front: hook selector, flags (bit 0
checksum complete, 1 truncated, 2 GSO, 3 services from the input, bits 4-5 the input and
6-7 the output interface: 0 pub0, 1 ppp0), packet mark. Checksums are right, so the
target's "a right checksum stays right" checks have something to hold on to. The output is
deterministic; rerun it after changing the fixed services and commit the files it writes.
"""
import os
import struct

from scapy.all import ICMP, IP, TCP, UDP, ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6, Raw
from scapy.layers.inet6 import IPv6ExtHdrHopByHop

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT4, CLIENT6 = "10.99.1.2", "2001:db8:1::2"
PRE, POST, INPUT = 0, 3, 6  # hook selectors: prerouting, postrouting, input


def meta(hook, ready=True, truncated=False, indev=0, outdev=0, fuzzed=False, mark=0x1):
    flags = (1 if ready else 0) | (2 if truncated else 0) | (8 if fuzzed else 0)
    flags |= indev << 4 | outdev << 6
    return bytes([hook, flags]) + struct.pack(">I", mark)


def raw(pkt):
    return bytes(pkt.__class__(bytes(pkt)))


def datapath_seeds():
    syn4 = IP(src=CLIENT4, dst="10.99.1.1") / TCP(sport=40312, dport=80, flags="S", seq=1)
    synack4 = IP(src="192.168.77.10", dst=CLIENT4) / TCP(sport=8080, dport=40312, flags="SA")
    dns4 = IP(src=CLIENT4, dst="10.99.1.1") / UDP(sport=41000, dport=53) / Raw(b"\x12\x34" * 10)
    dns4_reply = IP(src="192.168.77.53", dst=CLIENT4) / UDP(sport=53, dport=41000) / Raw(b"ab" * 9)
    dns4_nocsum = IP(src=CLIENT4, dst="10.99.1.1") / UDP(sport=41001, dport=53, chksum=0) / Raw(b"q")
    tls4 = IP(src=CLIENT4, dst="10.99.1.5") / TCP(sport=40313, dport=443, flags="PA") / Raw(b"x" * 33)
    syn6 = IPv6(src=CLIENT6, dst="2001:db8::1") / TCP(sport=40312, dport=80, flags="S")
    synack6 = IPv6(src="fd00::10", dst=CLIENT6) / TCP(sport=8080, dport=40312, flags="SA")
    dns6 = IPv6(src=CLIENT6, dst="2001:db8::5") / UDP(sport=41000, dport=53) / Raw(b"v6?")
    dns6_reply = IPv6(src="fd00::53", dst=CLIENT6) / UDP(sport=5353, dport=41000) / Raw(b"v6!")
    hbh6 = IPv6(src=CLIENT6, dst="2001:db8::1") / IPv6ExtHdrHopByHop() / TCP(sport=40314, dport=80)
    smtp4 = IP(src=CLIENT4, dst="203.0.113.1") / TCP(sport=40315, dport=25, flags="S")
    # The actual server's port unreachable quotes what it got: client -> actual endpoint.
    unreach4 = IP(src="192.168.77.53", dst=CLIENT4) / ICMP(type=3, code=3) / raw(
        IP(src=CLIENT4, dst="192.168.77.53") / UDP(sport=41000, dport=53) / Raw(b"\x12\x34" * 4)
    )
    # The public side's fragmentation needed quotes the translated reply: apparent -> client.
    fragneed4 = IP(src="10.99.1.254", dst="10.99.1.1") / ICMP(type=3, code=4, nexthopmtu=1280) / raw(
        IP(src="10.99.1.1", dst=CLIENT4) / TCP(sport=80, dport=40312, flags="A")
    )
    unreach6 = IPv6(src="fd00::53", dst=CLIENT6) / ICMPv6DestUnreach(code=4) / raw(
        IPv6(src=CLIENT6, dst="fd00::53") / UDP(sport=41000, dport=5353) / Raw(b"v6?")
    )
    toobig6 = IPv6(src="2001:db8::fe", dst="2001:db8::1") / ICMPv6PacketTooBig(mtu=1280) / raw(
        IPv6(src="2001:db8::1", dst=CLIENT6) / TCP(sport=80, dport=40312, flags="A")
    )
    later_frag4 = IP(src=CLIENT4, dst="10.99.1.1", frag=100, proto=17) / Raw(b"z" * 24)
    unmapped4 = IP(src="192.168.77.99", dst=CLIENT4) / TCP(sport=8080, dport=40312, flags="A")
    one_service = bytes([0, 0, 0, 0, 0, 0, 0])  # count 0 -> 1 service: pub0 * 80 TCP -> .10:8080

    return {
        "tcp4_syn_in": meta(PRE) + raw(syn4),
        "tcp4_synack_out": meta(POST) + raw(synack4),
        "udp4_in": meta(PRE) + raw(dns4),
        "udp4_out": meta(POST) + raw(dns4_reply),
        "udp4_no_checksum_in": meta(PRE) + raw(dns4_nocsum),
        "tcp4_fixed_in": meta(PRE) + raw(tls4),
        "tcp6_syn_in": meta(PRE) + raw(syn6),
        "tcp6_synack_out": meta(POST) + raw(synack6),
        "udp6_in": meta(PRE) + raw(dns6),
        "udp6_out": meta(POST) + raw(dns6_reply),
        "tcp6_hop_by_hop_in": meta(PRE) + raw(hbh6),
        "tcp4_ppp0_in": meta(PRE, indev=1) + raw(smtp4),
        "icmp4_port_unreach_out": meta(POST) + raw(unreach4),
        "icmp4_frag_needed_in": meta(PRE) + raw(fragneed4),
        "icmp6_port_unreach_out": meta(POST) + raw(unreach6),
        "icmp6_too_big_in": meta(PRE) + raw(toobig6),
        "fragment4_later_in": meta(PRE) + raw(later_frag4),
        "tcp4_unmapped_reply": meta(POST) + raw(unmapped4),
        "tcp4_truncated_in": meta(PRE, truncated=True) + raw(syn4),
        "tcp4_not_ready_in": meta(PRE, ready=False) + raw(syn4),
        "tcp4_input_hook": meta(INPUT) + raw(syn4),
        "tcp4_fuzzed_service_in": meta(PRE, fuzzed=True) + one_service + raw(syn4),
    }


CONFIGS = {
    "example": open(os.path.join(HERE, "..", "examples", "netnat.conf")).read(),
    "queue0_64": "queue 0\nqueues 64\nservice pub0 port * 80 TCP 192.168.1.10 8080 0x8000\n",
    "queue_last": "queue 65535\nqueues auto\nservice pub0 port 10.0.0.1 53 UDP 192.168.1.53 53\n",
    "both_families": (
        "mark 0x10\nbusy-poll 0\nsyslog-facility local5\nsyslog-priority debug\n"
        "service pub0 port * 80 TCP 192.168.1.10 8080 0xf800\n"
        "service pub0 port * 80 TCP fd00::10 8080 0xf800\n"
        "service pub0 port 2001:db8::5 53 udp fd00::53 5353 0x1000\n"
        "service ppp0 port 203.0.113.5 443 tcp 192.168.1.11 443 c000\n"
        "service ppp0 port * 25 TCP 10.0.0.25 25 # mail\n"
    ),
    "empty": "",
}


def main():
    for target, seeds in (("datapath", datapath_seeds()), ("config_to_batch", CONFIGS)):
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        print(f"{d}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
