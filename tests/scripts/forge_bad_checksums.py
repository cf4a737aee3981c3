#!/usr/bin/python3
"""Sends, at layer 2 from IFACE, packets with deliberately wrong checksums to the router.

usage: forge_bad_checksums.py IFACE DST_MAC SRC4 DST4 SRC6 DST6

Used once to prove that the capture tests' checksum filter really catches bad checksums:
1. IPv4 header checksum wrong, 2. IPv4/TCP checksum wrong, 3. IPv4/UDP checksum wrong,
4. IPv6/TCP checksum wrong, 5. IPv6/UDP checksum wrong; and three that are NOT wrong checksums:
6./7. IPv4 and IPv6 TCP whose checksum computes to 0x0000, sent as 0xFFFF (the same
one's-complement zero), 8. IPv4 UDP with checksum 0 ("none", flagged apart as missing).
Port 9 (discard): nothing listens.
"""
import sys

from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw, sendp  # noqa: E402

iface, mac, s4, d4, s6, d6 = sys.argv[1:7]
e = Ether(dst=mac)
pkts = [
    e / IP(src=s4, dst=d4, chksum=0x1234) / UDP(sport=40001, dport=9) / Raw(b"bad-ip"),
    e / IP(src=s4, dst=d4) / TCP(sport=40002, dport=9, flags="S", chksum=0xDEAD),
    e / IP(src=s4, dst=d4) / UDP(sport=40003, dport=9, chksum=0xBEEF) / Raw(b"bad-udp"),
    e / IPv6(src=s6, dst=d6) / TCP(sport=40004, dport=9, flags="S", chksum=0xDEAD),
    e / IPv6(src=s6, dst=d6) / UDP(sport=40005, dport=9, chksum=0xBEEF) / Raw(b"bad-udp6"),
]


def tcp_sum_zero(ip, sport):
    """TCP whose correct checksum is 0x0000, sent with the equivalent 0xFFFF."""
    p = Ether(bytes(e / ip / TCP(sport=sport, dport=9, flags="A") / Raw(b"\x00\x00")))
    p[Raw].load = p[TCP].chksum.to_bytes(2, "big")
    del p[TCP].chksum
    p = Ether(bytes(p))
    assert p[TCP].chksum == 0, hex(p[TCP].chksum)
    p[TCP].chksum = 0xFFFF
    return p


pkts += [
    tcp_sum_zero(IP(src=s4, dst=d4), 40006),
    tcp_sum_zero(IPv6(src=s6, dst=d6), 40007),
    e / IP(src=s4, dst=d4) / UDP(sport=40008, dport=9, chksum=0) / Raw(b"no-udp-sum"),
]
sendp(pkts, iface=iface, verbose=False)
print(f"sent {len(pkts)}", flush=True)
