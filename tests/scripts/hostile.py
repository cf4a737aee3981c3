#!/usr/bin/python3
"""Hostile packets for netnat's reliability test, sent class by class at layer 2.

usage: hostile.py IFACE ROUTER_MAC GODIR COUNT CLASS:PORT...

For each CLASS (in the order given) builds COUNT packets from the client (10.99.1.2 /
fd99:1::2) to the apparent addresses 10.99.1.80 / fd99:1::80 and PORT, sends them from IFACE
with an AF_PACKET socket (layer 2: the kernel of the client rewrites nothing, so bad IPv4
checksums and lengths really go out), prints `sent CLASS COUNT`, then waits (at most 60 s) for
the file GODIR/go-CLASS before the next class, so the test can measure each class on its own.
Packets go out in bursts of 50 with a short pause, well below the router's backlog.

Fragment identifiers are unique per packet and per class, so that fragments of one class
never complete a datagram of another one.
"""
import os
import socket
import struct
import sys
import time

from scapy.all import (ICMP, IP, TCP, UDP, Ether, HBHOptUnknown, ICMPv6DestUnreach, IPOption_NOP,
                       IPOption_Router_Alert, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, PadN, Raw)

iface, rmac, godir, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
classes = [(c.split(":")[0], int(c.split(":")[1])) for c in sys.argv[5:]]
C4, A4, C6, A6 = "10.99.1.2", "10.99.1.80", "fd99:1::2", "fd99:1::80"
VARIANTS = 20


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fix_ip_csum(b):
    """Recomputes the IPv4 header checksum after patching header bytes."""
    ihl = (b[0] & 0x0F) * 4
    h = bytearray(b[:ihl])
    h[10:12] = b"\0\0"
    h[10:12] = struct.pack("!H", csum(bytes(h)))
    return bytes(h) + b[ihl:]


def v4(sport, port, **kw):
    return IP(src=C4, dst=A4, **kw)


def tcp(sport, port, **kw):
    return TCP(sport=sport, dport=port, flags=kw.pop("flags", "S"), seq=1000 + sport, **kw)


def udp_body4(sport, port, n=40):
    return bytes(IP(src=C4, dst=A4) / UDP(sport=sport, dport=port) / Raw(b"y" * n))[20:]


def udp_body6(sport, port, n=40):
    return bytes(IPv6(src=C6, dst=A6) / UDP(sport=sport, dport=port) / Raw(b"y" * n))[40:]


def garbage_option(sport, port):
    # ihl 6: one option word, patched to type 0x99 with a length past the header.
    b = bytearray(bytes(v4(sport, port, options=[IPOption_NOP()] * 4) / tcp(sport, port)))
    b[20:24] = b"\x99\xff\x00\x00"
    return fix_ip_csum(bytes(b))


def trailing4(sport, port):
    return bytes(v4(sport, port) / tcp(sport, port)) + b"\xee" * 16


def trailing6(sport, port):
    return bytes(IPv6(src=C6, dst=A6) / tcp(sport, port)) + b"\xee" * 16


def cut_tcp4(sport, port):
    # Total length 30: the kernel trims the frame to IP + 10 bytes of TCP.
    b = bytearray(bytes(v4(sport, port) / tcp(sport, port)))
    b[2:4] = struct.pack("!H", 30)
    return fix_ip_csum(bytes(b))


def short_tcp6(sport, port):
    seg = bytes(IPv6(src=C6, dst=A6) / tcp(sport, port))[40:50]
    return bytes(IPv6(src=C6, dst=A6, nh=6) / Raw(seg))


def tcp_doff(sport, port, doff):
    b = bytearray(bytes(v4(sport, port) / tcp(sport, port)))
    b[32] = (doff << 4) | (b[32] & 0x0F)
    return bytes(b)


def frag4(ident, sport, port, which, overlap=False):
    body = udp_body4(sport, port)
    first = IP(src=C4, dst=A4, id=ident, flags="MF", frag=0, proto=17) / Raw(body[:24])
    second_off = 2 if overlap else 3
    second = IP(src=C4, dst=A4, id=ident, frag=second_off, proto=17) / Raw(body[second_off * 8:])
    return {"first": [first], "second": [second], "both": [first, second]}[which]


def frag6(ident, sport, port, which):
    body = udp_body6(sport, port)
    first = IPv6(src=C6, dst=A6) / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=ident) / Raw(body[:24])
    second = IPv6(src=C6, dst=A6) / IPv6ExtHdrFragment(nh=17, offset=3, m=0, id=ident) / Raw(body[24:])
    return {"first": [first], "second": [second], "both": [first, second]}[which]


def icmp_unrelated4(sport, port):
    quote = IP(src="203.0.113.7", dst="198.51.100.9") / UDP(sport=sport, dport=5678) / Raw(b"q" * 8)
    return IP(src=C4, dst=A4) / ICMP(type=3, code=3) / quote


def icmp_unrelated6(sport, port):
    quote = IPv6(src="2001:db8::7", dst="2001:db8::9") / UDP(sport=sport, dport=5678) / Raw(b"q" * 8)
    return IPv6(src=C6, dst=A6) / ICMPv6DestUnreach(code=4) / quote


def icmp_short_quote4(sport, port):
    quote = bytes(IP(src=A4, dst=C4) / UDP(sport=port, dport=sport))[:24]
    return IP(src=C4, dst=A4) / ICMP(type=3, code=3) / Raw(quote)


def icmp_quote_v6_in_v4(sport, port):
    quote = bytes(IPv6(src=A6, dst=C6) / UDP(sport=port, dport=sport))
    return IP(src=C4, dst=A4) / ICMP(type=3, code=3) / Raw(quote)


def padn():
    return [PadN(optdata=b"\0\0\0\0")]


# name -> function(sport, port, ident) giving one packet (bytes or scapy) or a list of them.
BUILD = {
    "v4_tcp_syn": lambda s, p, i: v4(s, p) / tcp(s, p),
    "v4_ip_bad_checksum": lambda s, p, i: v4(s, p, chksum=0x1234) / tcp(s, p),
    "v4_ihl_4": lambda s, p, i: v4(s, p, ihl=4) / tcp(s, p),
    "v4_ihl_beyond_packet": lambda s, p, i: v4(s, p, ihl=15) / tcp(s, p),
    "v4_total_len_beyond_packet": lambda s, p, i: v4(s, p, len=1000) / tcp(s, p),
    "v4_total_len_below_ihl": lambda s, p, i: v4(s, p, len=16) / tcp(s, p),
    "v4_trailing_bytes": lambda s, p, i: trailing4(s, p),
    "v4_total_len_cuts_tcp": lambda s, p, i: cut_tcp4(s, p),
    "v4_ip_options_nop": lambda s, p, i: v4(s, p, options=[IPOption_NOP()] * 4) / tcp(s, p),
    "v4_ip_option_router_alert": lambda s, p, i: v4(s, p, options=[IPOption_Router_Alert()]) / tcp(s, p),
    "v4_ip_option_garbage": lambda s, p, i: garbage_option(s, p),
    "v4_tcp_doff_2": lambda s, p, i: tcp_doff(s, p, 2),
    "v4_tcp_doff_15": lambda s, p, i: tcp_doff(s, p, 15),
    "v4_tcp_all_flags": lambda s, p, i: v4(s, p) / tcp(s, p, flags="FSRPAUEC"),
    "v4_tcp_no_flags": lambda s, p, i: v4(s, p) / tcp(s, p, flags=""),
    "v4_tcp_odd_options": lambda s, p, i: v4(s, p) / tcp(s, p, options=[
        ("MSS", 1), ("WScale", 14), ("SAckOK", b""), ("Timestamp", (1, 0)), (253, b"\xde\xad"),
        ("EOL", None)]),
    "v4_tcp_option_bad_length": lambda s, p, i: v4(s, p) / tcp(s, p, options=[(2, b"\xff")]),
    "v4_tcp_bad_checksum": lambda s, p, i: v4(s, p) / tcp(s, p, chksum=0xDEAD),
    "v4_tcp_2_bytes": lambda s, p, i: v4(s, p, proto=6) / Raw(struct.pack("!H", s)),
    "v4_udp_empty": lambda s, p, i: v4(s, p) / UDP(sport=s, dport=p),
    "v4_udp_len_0": lambda s, p, i: v4(s, p) / UDP(sport=s, dport=p, len=0) / Raw(b"z" * 8),
    "v4_udp_len_beyond": lambda s, p, i: v4(s, p) / UDP(sport=s, dport=p, len=200) / Raw(b"z" * 8),
    "v4_udp_no_checksum": lambda s, p, i: v4(s, p) / UDP(sport=s, dport=p, chksum=0) / Raw(b"z" * 8),
    "v4_udp_bad_checksum": lambda s, p, i: v4(s, p) / UDP(sport=s, dport=p, chksum=0xBEEF) / Raw(b"z" * 8),
    "v4_frag_first_alone": lambda s, p, i: frag4(i, s, p, "first"),
    "v4_frag_later_alone": lambda s, p, i: frag4(i, s, p, "second"),
    "v4_frag_pairs": lambda s, p, i: frag4(i, s, p, "both"),
    "v4_frag_overlapping": lambda s, p, i: frag4(i, s, p, "both", overlap=True),
    "v4_ttl_1": lambda s, p, i: v4(s, p, ttl=1) / tcp(s, p),
    "v4_other_protocol": lambda s, p, i: v4(s, p, proto=132) / Raw(struct.pack("!HH", s, p) + b"\0" * 8),
    "v4_icmp_echo": lambda s, p, i: v4(s, p) / ICMP(id=s),
    "v4_icmp_error_unrelated": lambda s, p, i: icmp_unrelated4(s, p),
    "v4_icmp_error_short_quote": lambda s, p, i: icmp_short_quote4(s, p),
    "v4_icmp_error_quotes_ipv6": lambda s, p, i: icmp_quote_v6_in_v4(s, p),
    "v6_tcp_syn": lambda s, p, i: IPv6(src=C6, dst=A6) / tcp(s, p),
    "v6_payload_len_beyond": lambda s, p, i: IPv6(src=C6, dst=A6, plen=1000) / tcp(s, p),
    "v6_trailing_bytes": lambda s, p, i: trailing6(s, p),
    "v6_tcp_short_header": lambda s, p, i: short_tcp6(s, p),
    "v6_hop_by_hop": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrHopByHop(options=padn()) / tcp(s, p),
    "v6_hop_by_hop_discard_option": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrHopByHop(
        options=[HBHOptUnknown(otype=0x5E, optdata=b"\0\0\0\0")]) / tcp(s, p),
    "v6_dest_options": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrDestOpt(options=padn()) / tcp(s, p),
    "v6_routing_segments_left_0": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrRouting(
        addresses=["fd99:77::99"], segleft=0) / tcp(s, p),
    "v6_routing_segments_left_1": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrRouting(
        addresses=["fd99:77::99"], segleft=1) / tcp(s, p),
    "v6_hop_by_hop_not_first": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrDestOpt(options=padn())
    / IPv6ExtHdrHopByHop(options=padn()) / tcp(s, p),
    "v6_ext_chain": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrHopByHop(options=padn())
    / IPv6ExtHdrDestOpt(options=padn()) / IPv6ExtHdrRouting(addresses=[], segleft=0)
    / IPv6ExtHdrDestOpt(options=padn()) / tcp(s, p),
    "v6_atomic_fragment": lambda s, p, i: IPv6(src=C6, dst=A6) / IPv6ExtHdrFragment(offset=0, m=0, id=i)
    / tcp(s, p),
    "v6_frag_first_alone": lambda s, p, i: frag6(i, s, p, "first"),
    "v6_frag_later_alone": lambda s, p, i: frag6(i, s, p, "second"),
    "v6_frag_pairs": lambda s, p, i: frag6(i, s, p, "both"),
    "v6_hop_limit_1": lambda s, p, i: IPv6(src=C6, dst=A6, hlim=1) / tcp(s, p),
    "v6_udp_zero_checksum": lambda s, p, i: IPv6(src=C6, dst=A6) / UDP(sport=s, dport=p, chksum=0) / Raw(b"z" * 8),
    "v6_no_next_header": lambda s, p, i: IPv6(src=C6, dst=A6, nh=59) / Raw(struct.pack("!HH", s, p)),
    "v6_icmp_error_unrelated": lambda s, p, i: icmp_unrelated6(s, p),
}

# Classes whose every packet must differ (fragment identifiers); the others cycle variants.
UNIQUE = {"frag", "atomic"}

sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((iface, 0))
cmac = open(f"/sys/class/net/{iface}/address").read().strip()
eth = Ether(dst=rmac, src=cmac)

for ci, (name, port) in enumerate(classes):
    build = BUILD[name]
    unique = any(u in name for u in UNIQUE)
    frames = []
    k = 0
    while len(frames) < count and (unique or k < VARIANTS):
        sport = 30000 + k
        ident = (ci + 1) * 1000 + k  # < 65536, unique per class and packet
        pk = build(sport, port, ident)
        for one in pk if isinstance(pk, list) else [pk]:
            body = one if isinstance(one, bytes) else bytes(one)
            etype = b"\x86\xdd" if body[0] >> 4 == 6 else b"\x08\x00"
            frames.append(bytes(eth)[:12] + etype + body)
        k += 1
    # Classes without fragments cycle their variants up to the count.
    frames = [frames[j % len(frames)] for j in range(count)]
    frames = frames[:count]
    for j in range(0, len(frames), 50):
        for f in frames[j:j + 50]:
            sock.send(f)
        time.sleep(0.003)
    print(f"sent {name} {len(frames)}", flush=True)
    go = os.path.join(godir, f"go-{name}")
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            print(f"no go for {name}", flush=True)
            sys.exit(3)
        time.sleep(0.01)
print("done", flush=True)
