//! Unit tests, one scenario each, checked against pnet's checksums and explicit byte positions.

use super::*;

const CLIENT4: &str = "10.99.1.2:40000";
const APP4: &str = "10.99.1.1:80";
const ACT4: &str = "192.168.77.10:8080";
const CLIENT6: &str = "[2001:db8:1::2]:40000";
const APP6: &str = "[2001:db8:1::1]:80";
const ACT6: &str = "[fd00:77::10]:8080";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Offsets where `a` and `b` differ.
fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

/// Asserts that every changed byte lies in one of `allowed`.
fn only_changed(a: &[u8], b: &[u8], allowed: &[std::ops::Range<usize>]) {
    for i in diff(a, b) {
        assert!(
            allowed.iter().any(|r| r.contains(&i)),
            "byte {i} changed unexpectedly ({:02x} -> {:02x})",
            a[i],
            b[i]
        );
    }
}

/// Rewrites a copy of `pkt` and returns the outcome and the result.
fn run(pkt: &[u8], dir: Direction, csum: ChecksumState, map: &Map) -> (Outcome<u32>, Vec<u8>) {
    let mut buf = pkt.to_vec();
    let out = rewrite(&mut buf, dir, csum, map.lookup());
    assert!(
        map.calls.get() <= 1,
        "lookup called {} times",
        map.calls.get()
    );
    if !matches!(out, Outcome::Rewritten { .. }) {
        assert_eq!(buf, pkt, "buffer changed although not rewritten: {out:?}");
    }
    (out, buf)
}

/// Same, for a fresh map.
fn run_map(
    pkt: &[u8],
    dir: Direction,
    csum: ChecksumState,
    from: &str,
    to: &str,
) -> (Outcome<u32>, Vec<u8>) {
    run(pkt, dir, csum, &Map::new(from, to))
}

/// [`run_map`] of the commonest case: inbound to `APP4`, mapped to `ACT4`, checksum complete.
fn inbound4(pkt: &[u8]) -> (Outcome<u32>, Vec<u8>) {
    run_map(pkt, Direction::Inbound, ChecksumState::Complete, APP4, ACT4)
}

/// What an ICMP message left alone gives.
const NOT_OURS_ICMP: Outcome<u32> = Outcome::NotOurs {
    kind: Kind::IcmpError,
};

/// Sets the transport checksum of `pkt` to the pseudo-header seed, as a CHECKSUM_PARTIAL
/// packet carries it.
fn make_partial(pkt: &mut [u8]) {
    let (src, dst, proto, l4, end) = walk(pkt).unwrap();
    let at = l4 + if proto == 6 { 16 } else { 6 };
    let s = seed(src, dst, proto, end - l4);
    pkt[at..at + 2].copy_from_slice(&s.to_be_bytes());
}

fn rewritten(out: &Outcome<u32>) -> (Flow, Kind) {
    match out {
        Outcome::Rewritten { token, flow, kind } => {
            assert_eq!(*token, 7);
            (*flow, *kind)
        }
        other => panic!("not rewritten: {other:?}"),
    }
}

// ---------------------------------------------------------------- plain TCP/UDP

#[test]
fn tcp_v4_inbound_syn() {
    let mut spec = Spec::new(Protocol::Tcp, CLIENT4, APP4);
    spec.tcp_flags = 0x02;
    let pkt = build(&spec);
    let map = Map::new(APP4, ACT4);
    let (out, after) = run(&pkt, Direction::Inbound, ChecksumState::Complete, &map);
    let (flow, kind) = rewritten(&out);
    assert_eq!(map.asked.get(), Some((Protocol::Tcp, sa(APP4))));
    assert_eq!(kind, Kind::Plain { syn: true });
    assert_eq!(
        flow,
        Flow {
            protocol: Protocol::Tcp,
            src: sa(CLIENT4),
            dst: sa(APP4)
        }
    );
    assert_eq!(&after[16..20], &[192, 168, 77, 10]);
    assert_eq!(&after[22..24], &8080u16.to_be_bytes());
    only_changed(&pkt, &after, &[10..12, 16..20, 22..24, 36..38]);
    verify(&after).unwrap();
    spec.dst = sa(ACT4);
    assert_eq!(
        after,
        build(&spec),
        "differs from a packet built for the actual server"
    );
}

#[test]
fn tcp_syn_ack_is_not_syn() {
    let mut spec = Spec::new(Protocol::Tcp, ACT4, CLIENT4);
    spec.tcp_flags = 0x12;
    let (out, after) = run_map(
        &build(&spec),
        Direction::Reply,
        ChecksumState::Complete,
        ACT4,
        APP4,
    );
    assert_eq!(rewritten(&out).1, Kind::Plain { syn: false });
    spec.src = sa(APP4);
    assert_eq!(after, build(&spec));
}

#[test]
fn plain_packets_both_families_both_directions() {
    for proto in [Protocol::Tcp, Protocol::Udp] {
        for (client, app, act) in [(CLIENT4, APP4, ACT4), (CLIENT6, APP6, ACT6)] {
            for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
                // Inbound: client -> apparent becomes client -> actual (`app` looked up,
                // `act` its mapping); reply: actual -> client becomes apparent -> client.
                for (dir, (from, to), (key, mapped), (new_from, new_to)) in [
                    (Direction::Inbound, (client, app), (app, act), (client, act)),
                    (Direction::Reply, (act, client), (act, app), (app, client)),
                ] {
                    let mut spec = Spec::new(proto, from, to);
                    let mut pkt = build(&spec);
                    if csum == ChecksumState::NotReady {
                        make_partial(&mut pkt);
                    }
                    let (out, after) = run_map(&pkt, dir, csum, key, mapped);
                    let (flow, _) = rewritten(&out);
                    assert_eq!((flow.src, flow.dst), (sa(from), sa(to)));
                    (spec.src, spec.dst) = (sa(new_from), sa(new_to));
                    assert_eq!(after, build(&spec), "{proto:?} {client} {csum:?} {dir:?}");
                }
            }
        }
    }
}

#[test]
fn not_ours_is_left_alone() {
    for (proto, kind) in [
        (Protocol::Tcp, Kind::Plain { syn: true }),
        (Protocol::Udp, Kind::Plain { syn: false }),
    ] {
        let mut spec = Spec::new(proto, CLIENT4, "10.99.1.1:81");
        spec.tcp_flags = 0x02;
        let map = Map::new(APP4, ACT4);
        let (out, _) = run(
            &build(&spec),
            Direction::Inbound,
            ChecksumState::Complete,
            &map,
        );
        assert_eq!(out, Outcome::NotOurs { kind });
        assert_eq!(map.calls.get(), 1);
        assert_eq!(map.asked.get(), Some((proto, sa("10.99.1.1:81"))));
    }
}

#[test]
fn udp_v4_without_checksum_stays_without() {
    let mut spec = Spec::new(Protocol::Udp, CLIENT4, APP4);
    spec.udp_no_csum = true;
    let pkt = build(&spec);
    assert_eq!(&pkt[26..28], &[0, 0]);
    let (out, after) = inbound4(&pkt);
    rewritten(&out);
    assert_eq!(&after[26..28], &[0, 0]);
    only_changed(&pkt, &after, &[10..12, 16..20, 22..24]);
    verify(&after).unwrap();
}

/// Chooses the last payload word so that the packet's checksum, once addressed to `act`,
/// computes to 0 (which UDP sends as 0xFFFF).
fn payload_for_zero_checksum(proto: Protocol, client: &str, act: &str) -> Vec<u8> {
    let mut spec = Spec::new(proto, client, act);
    spec.payload = vec![0xab, 0xcd, 0, 0];
    let probe = build(&spec);
    let (_, _, _, l4, _) = walk(&probe).unwrap();
    let at = l4 + csum_at(proto);
    let mut c = field(&probe, at);
    if proto == Protocol::Udp && c == 0xFFFF {
        c = 0; // already computes to 0: keep the payload as it is
    }
    // Adding the computed checksum as data makes the sum 0xFFFF, so the checksum 0.
    let [hi, lo] = c.to_be_bytes();
    vec![0xab, 0xcd, hi, lo]
}

#[test]
fn computed_zero_udp_checksum_is_sent_as_ffff() {
    for (client, app, act) in [(CLIENT4, APP4, ACT4), (CLIENT6, APP6, ACT6)] {
        let payload = payload_for_zero_checksum(Protocol::Udp, client, act);
        let mut spec = Spec::new(Protocol::Udp, client, app);
        spec.payload = payload.clone();
        for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
            let mut pkt = build(&spec);
            if csum == ChecksumState::NotReady {
                make_partial(&mut pkt);
            }
            let (out, after) = run_map(&pkt, Direction::Inbound, csum, app, act);
            rewritten(&out);
            let (_, _, _, l4, _) = walk(&after).unwrap();
            assert_eq!(field(&after, l4 + 6), 0xFFFF, "{client} {csum:?}");
            verify(&after).unwrap();
        }
        // TCP has no such rule: its computed 0 stays 0.
        let payload = payload_for_zero_checksum(Protocol::Tcp, client, act);
        let mut spec = Spec::new(Protocol::Tcp, client, app);
        spec.payload = payload;
        let mut pkt = build(&spec);
        make_partial(&mut pkt);
        let (out, after) = run_map(&pkt, Direction::Inbound, ChecksumState::NotReady, app, act);
        rewritten(&out);
        let (_, _, _, l4, _) = walk(&after).unwrap();
        assert_eq!(field(&after, l4 + 16), 0);
    }
}

#[test]
fn ipv4_options_and_tcp_options() {
    for words in [1u8, 3, 10] {
        let mut spec = Spec::new(Protocol::Tcp, CLIENT4, APP4);
        spec.v4_option_words = words;
        spec.tcp_option_words = words;
        let (out, after) = inbound4(&build(&spec));
        rewritten(&out);
        spec.dst = sa(ACT4);
        assert_eq!(after, build(&spec), "{words} option words");
    }
}

#[test]
fn ipv6_extension_headers() {
    let chains = [
        vec![Ext::HopByHop(0)],
        vec![
            Ext::HopByHop(1),
            Ext::DestOpts(0),
            Ext::Routing { segments_left: 0 },
        ],
        vec![Ext::Fragment {
            offset: 0,
            more: false,
        }],
        vec![Ext::DestOpts(2), Ext::Auth(4), Ext::DestOpts(0)],
    ];
    for chain in chains {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
                let mut spec = Spec::new(proto, ACT6, CLIENT6);
                spec.v6_ext = chain.clone();
                let mut pkt = build(&spec);
                if csum == ChecksumState::NotReady {
                    make_partial(&mut pkt);
                }
                let (out, after) = run_map(&pkt, Direction::Reply, csum, ACT6, APP6);
                rewritten(&out);
                spec.src = sa(APP6);
                assert_eq!(after, build(&spec), "{chain:?} {proto:?} {csum:?}");
            }
        }
    }
}

#[test]
fn ipv6_source_routed_is_refused() {
    let mut spec = Spec::new(Protocol::Tcp, CLIENT6, APP6);
    spec.v6_ext = vec![Ext::Routing { segments_left: 1 }];
    let (out, _) = run_map(
        &build(&spec),
        Direction::Inbound,
        ChecksumState::Complete,
        APP6,
        ACT6,
    );
    assert_eq!(out, Outcome::Malformed(Malformed::SourceRouted));
}

#[test]
fn trailing_bytes_are_ignored() {
    for (client, app, act) in [(CLIENT4, APP4, ACT4), (CLIENT6, APP6, ACT6)] {
        for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
            let mut spec = Spec::new(Protocol::Udp, client, app);
            let mut pkt = build(&spec);
            if csum == ChecksumState::NotReady {
                make_partial(&mut pkt);
            }
            let n = pkt.len();
            pkt.extend_from_slice(&[0xEE; 13]);
            let (out, after) = run_map(&pkt, Direction::Inbound, csum, app, act);
            rewritten(&out);
            spec.dst = sa(act);
            assert_eq!(&after[..n], &build(&spec)[..]);
            assert_eq!(&after[n..], &[0xEE; 13]);
        }
    }
}

#[test]
fn gso_super_packets_full_checksum() {
    for (client, app, act) in [(CLIENT4, APP4, ACT4), (CLIENT6, APP6, ACT6)] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let mut spec = Spec::new(proto, client, app);
            spec.payload = (0..65_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut pkt = build(&spec);
            make_partial(&mut pkt);
            let (out, after) = run_map(&pkt, Direction::Inbound, ChecksumState::NotReady, app, act);
            rewritten(&out);
            spec.dst = sa(act);
            assert!(after == build(&spec), "{proto:?} {client}");
        }
    }
}

#[test]
fn udp_with_ip_padding_covers_udp_length_only() {
    let mut spec = Spec::new(Protocol::Udp, CLIENT4, APP4);
    spec.payload = vec![1, 2, 3];
    let mut pkt = build(&spec);
    // Two bytes of IP padding after the datagram, inside the IP total length.
    pkt.extend_from_slice(&[0x55, 0x66]);
    let total = pkt.len() as u16;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    let c = pnet_packet::ipv4::checksum(&Ipv4Packet::new(&pkt[..20]).unwrap());
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
    make_partial_udp_len(&mut pkt);
    let (out, after) = run_map(
        &pkt,
        Direction::Inbound,
        ChecksumState::NotReady,
        APP4,
        ACT4,
    );
    rewritten(&out);
    verify(&after).unwrap();
}

/// Seed computed over the UDP length (not the IP payload length).
fn make_partial_udp_len(pkt: &mut [u8]) {
    let (src, dst, _, l4, _) = walk(pkt).unwrap();
    let ulen = usize::from(field(pkt, l4 + 4));
    let s = seed(src, dst, 17, ulen);
    pkt[l4 + 6..l4 + 8].copy_from_slice(&s.to_be_bytes());
}

#[test]
fn bad_transport_headers() {
    // UDP length beyond the IP payload, and below the UDP header.
    for (ulen, want) in [
        (200u16, Malformed::BadTotalLength),
        (7, Malformed::BadTotalLength),
    ] {
        let mut pkt = build(&Spec::new(Protocol::Udp, CLIENT4, APP4));
        pkt[24..26].copy_from_slice(&ulen.to_be_bytes());
        let (out, _) = inbound4(&pkt);
        assert_eq!(out, Outcome::Malformed(want));
    }
    // TCP data offset below 5, and beyond the segment.
    for (doff, want) in [
        (4u8, Malformed::BadHeaderLength),
        (15, Malformed::Truncated),
    ] {
        let mut pkt = build(&Spec::new(Protocol::Tcp, CLIENT4, APP4));
        pkt[32] = doff << 4;
        let (out, _) = inbound4(&pkt);
        assert_eq!(out, Outcome::Malformed(want));
    }
    // An IP total length that leaves only 10 bytes of TCP.
    let mut pkt = build(&Spec::new(Protocol::Tcp, CLIENT4, APP4));
    pkt[2..4].copy_from_slice(&30u16.to_be_bytes());
    let (out, _) = inbound4(&pkt);
    assert_eq!(out, Outcome::Malformed(Malformed::Truncated));
}

#[test]
fn other_protocols_and_versions() {
    let mut pkt = build(&Spec::new(Protocol::Tcp, CLIENT4, APP4));
    pkt[9] = 47; // GRE
    let map = Map::new(APP4, ACT4);
    let (out, _) = run(&pkt, Direction::Inbound, ChecksumState::Complete, &map);
    assert_eq!(out, Outcome::Malformed(Malformed::UnsupportedProtocol));
    assert_eq!(map.calls.get(), 0);
    pkt[0] = 0x55;
    let (out, _) = run(&pkt, Direction::Inbound, ChecksumState::Complete, &map);
    assert_eq!(out, Outcome::Malformed(Malformed::BadVersion));
}

#[test]
fn lookup_of_the_other_family_is_refused() {
    let pkt = build(&Spec::new(Protocol::Tcp, CLIENT4, APP4));
    let (out, _) = run_map(
        &pkt,
        Direction::Inbound,
        ChecksumState::Complete,
        APP4,
        ACT6,
    );
    assert_eq!(out, Outcome::Malformed(Malformed::AddressFamily));
}

// ---------------------------------------------------------------- truncation

/// Every prefix of every kind of packet is refused with the buffer untouched and without a
/// lookup.
#[test]
fn truncated_everywhere() {
    let mut packets = Vec::new();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let mut s4 = Spec::new(proto, CLIENT4, APP4);
        s4.v4_option_words = 2;
        packets.push((build(&s4), APP4));
        let mut s6 = Spec::new(proto, CLIENT6, APP6);
        s6.v6_ext = vec![Ext::HopByHop(0), Ext::DestOpts(1)];
        packets.push((build(&s6), APP6));
    }
    packets.push((port_unreachable_v4(28 + 19), ACT4));
    packets.push((port_unreachable_v6(48 + 19), ACT6));
    for (pkt, key) in packets {
        for len in 0..pkt.len() {
            for dir in [Direction::Inbound, Direction::Reply] {
                for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
                    let map = Map::of(sa(key), sa(key));
                    let (out, _) = run(&pkt[..len], dir, csum, &map);
                    assert_eq!(out, Outcome::Malformed(Malformed::Truncated), "len {len}");
                    assert_eq!(map.calls.get(), 0);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- fragments

#[test]
fn first_fragments_are_updated_incrementally() {
    for (client, app, act) in [(CLIENT4, APP4, ACT4), (CLIENT6, APP6, ACT6)] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let mut spec = Spec::new(proto, client, app);
            spec.payload = (0..200u8).collect();
            if spec.src.is_ipv4() {
                spec.v4_more_fragments = true;
            } else {
                spec.v6_ext = vec![Ext::Fragment {
                    offset: 0,
                    more: true,
                }];
            }
            // The whole datagram carries the checksum; keep only its first 64 bytes of L4.
            let whole = build(&spec);
            let (_, _, _, l4, _) = walk(&whole).unwrap();
            let frag = first_fragment(&whole, l4 + 64);
            let (out, after) =
                run_map(&frag, Direction::Inbound, ChecksumState::Complete, app, act);
            assert_eq!(rewritten(&out).0.dst, sa(app));
            spec.dst = sa(act);
            let expect = first_fragment(&build(&spec), l4 + 64);
            assert_eq!(after, expect, "{proto:?} {client}");

            let (out, _) = run_map(&frag, Direction::Inbound, ChecksumState::NotReady, app, act);
            assert_eq!(out, Outcome::Malformed(Malformed::Fragment));
        }
    }
}

/// Cuts a datagram to `len` bytes and fixes its IP length fields (and IPv4 checksum).
fn first_fragment(whole: &[u8], len: usize) -> Vec<u8> {
    let mut p = whole[..len].to_vec();
    if p[0] >> 4 == 4 {
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let ihl = usize::from(p[0] & 15) * 4;
        let c = pnet_packet::ipv4::checksum(&Ipv4Packet::new(&p[..ihl]).unwrap());
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    }
    p
}

#[test]
fn later_fragments_are_refused() {
    let mut pkt = build(&Spec::new(Protocol::Udp, CLIENT4, APP4));
    pkt[6..8].copy_from_slice(&0x00b9u16.to_be_bytes());
    let map = Map::new(APP4, ACT4);
    let (out, _) = run(&pkt, Direction::Inbound, ChecksumState::Complete, &map);
    assert_eq!(out, Outcome::Malformed(Malformed::Fragment));
    assert_eq!(map.calls.get(), 0);

    let mut spec = Spec::new(Protocol::Udp, CLIENT6, APP6);
    spec.v6_ext = vec![Ext::Fragment {
        offset: 185,
        more: false,
    }];
    let (out, _) = run(
        &build(&spec),
        Direction::Inbound,
        ChecksumState::Complete,
        &map,
    );
    assert_eq!(out, Outcome::Malformed(Malformed::Fragment));
}

// ---------------------------------------------------------------- ICMP errors

/// The port unreachable `from` sends `client` about the UDP datagram `client` -> `server`,
/// quoting `quote_len` bytes of it (all of it when shorter); ICMPv6 for IPv6 addresses.
fn port_unreachable(from: &str, client: &str, server: &str, quote_len: usize) -> Vec<u8> {
    let mut spec = Spec::new(Protocol::Udp, client, server);
    spec.payload = b"dns query, say".to_vec();
    let quoted = build(&spec);
    let q = &quoted[..quote_len.min(quoted.len())];
    let (ty, code) = if sa(from).is_ipv6() { (1, 4) } else { (3, 3) };
    icmp(sa(from).ip(), sa(client).ip(), ty, code, [0; 4], q)
}

/// The actual server's port unreachable about an inbound (already translated) UDP packet,
/// quoting `quote_len` bytes of it.
fn port_unreachable_v4(quote_len: usize) -> Vec<u8> {
    port_unreachable(ACT4, CLIENT4, ACT4, quote_len)
}

fn port_unreachable_v6(quote_len: usize) -> Vec<u8> {
    port_unreachable(ACT6, CLIENT6, ACT6, quote_len)
}

#[test]
fn icmp_port_unreachable_from_server_full_quote() {
    for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
        for v6 in [false, true] {
            let (pkt, client, app, act) = if v6 {
                (port_unreachable_v6(1000), CLIENT6, APP6, ACT6)
            } else {
                (port_unreachable_v4(1000), CLIENT4, APP4, ACT4)
            };
            let map = Map::new(act, app);
            let (out, after) = run(&pkt, Direction::Reply, csum, &map);
            assert_eq!(map.asked.get(), Some((Protocol::Udp, sa(act))));
            let (flow, kind) = rewritten(&out);
            assert_eq!(kind, Kind::IcmpError);
            assert_eq!((flow.src, flow.dst), (sa(client), sa(act)));
            verify(&after).unwrap();
            // The whole message is now what the apparent endpoint would have sent.
            let expect = port_unreachable(app, client, app, usize::MAX);
            assert_eq!(after, expect, "v6 {v6} {csum:?}");
        }
    }
}

#[test]
fn icmp_truncated_quotes() {
    // 8 bytes of UDP (ports and checksum), and fewer than the whole datagram.
    for (quote_len, v6) in [(28, false), (30, false), (48, true), (55, true)] {
        let (pkt, client, app, act) = if v6 {
            (port_unreachable_v6(quote_len), CLIENT6, APP6, ACT6)
        } else {
            (port_unreachable_v4(quote_len), CLIENT4, APP4, ACT4)
        };
        let (out, after) = run_map(&pkt, Direction::Reply, ChecksumState::Complete, act, app);
        rewritten(&out);
        verify(&after).unwrap();
        let expect = port_unreachable(app, client, app, quote_len);
        assert_eq!(after, expect, "quote of {quote_len}");
    }
    // Fewer than 8 bytes of the transport header: no ports.
    let pkt = port_unreachable_v4(27);
    let (out, _) = run_map(&pkt, Direction::Reply, ChecksumState::Complete, ACT4, APP4);
    assert_eq!(out, Outcome::Malformed(Malformed::Truncated));
}

/// The router's own "fragmentation needed" about an inbound TCP packet it translated: the
/// quote gets the apparent endpoint back, the router's source address stays.
#[test]
fn router_fragmentation_needed() {
    const ROUTER4: &str = "10.99.1.1";
    for quote_tcp in [8usize, 17, 18, 20, 40] {
        let mut spec = Spec::new(Protocol::Tcp, CLIENT4, ACT4);
        spec.payload = vec![0x42; 20];
        let inner = build(&spec);
        let q = &inner[..20 + quote_tcp];
        let mtu = [0, 0, 0x05, 0x00];
        let router = ROUTER4.parse().unwrap();
        let pkt = icmp(router, sa(CLIENT4).ip(), 3, 4, mtu, q);
        let (out, after) = run_map(&pkt, Direction::Reply, ChecksumState::Complete, ACT4, APP4);
        rewritten(&out);
        assert_eq!(
            &after[12..16],
            &[10, 99, 1, 1],
            "outer source must stay the router's"
        );
        verify(&after).unwrap();
        spec.dst = sa(APP4);
        let mut expect_quote = build(&spec)[..20 + quote_tcp].to_vec();
        if quote_tcp < 18 {
            // The quoted checksum is not in the quote: its bytes are left as they were.
            expect_quote = q.to_vec();
            expect_quote[10..12].copy_from_slice(&build(&spec)[10..12]);
            expect_quote[16..20].copy_from_slice(&[10, 99, 1, 1]);
            expect_quote[22..24].copy_from_slice(&80u16.to_be_bytes());
        }
        let expect = icmp(router, sa(CLIENT4).ip(), 3, 4, mtu, &expect_quote);
        assert_eq!(after, expect, "{quote_tcp} bytes of TCP quoted");
    }
}

#[test]
fn router_packet_too_big_v6() {
    let router: IpAddr = "2001:db8:1::1".parse().unwrap();
    let mut spec = Spec::new(Protocol::Tcp, CLIENT6, ACT6);
    spec.payload = vec![0x42; 100];
    let inner = build(&spec);
    let pkt = icmp(
        router,
        sa(CLIENT6).ip(),
        2,
        0,
        1280u32.to_be_bytes(),
        &inner[..100],
    );
    for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
        let (out, after) = run_map(&pkt, Direction::Reply, csum, ACT6, APP6);
        rewritten(&out);
        assert_eq!(&after[8..24], &pkt[8..24]);
        spec.dst = sa(APP6);
        let expect = icmp(
            router,
            sa(CLIENT6).ip(),
            2,
            0,
            1280u32.to_be_bytes(),
            &build(&spec)[..100],
        );
        assert_eq!(after, expect);
    }
}

/// An error from the public side about one of our replies: the quote's source is the
/// apparent endpoint; the outer destination (the apparent address) becomes the actual one.
#[test]
fn icmp_inbound_about_a_reply() {
    for (client, app, act, hop) in [
        (CLIENT4, APP4, ACT4, "10.99.1.254"),
        (CLIENT6, APP6, ACT6, "2001:db8:1::fe"),
    ] {
        let mut spec = Spec::new(Protocol::Tcp, app, client);
        spec.payload = vec![9; 30];
        let reply = build(&spec);
        let hop: IpAddr = hop.parse().unwrap();
        let (ty, code) = if reply[0] >> 4 == 4 { (11, 0) } else { (3, 0) };
        let pkt = icmp(hop, sa(app).ip(), ty, code, [0; 4], &reply);
        let map = Map::new(app, act);
        let (out, after) = run(&pkt, Direction::Inbound, ChecksumState::Complete, &map);
        assert_eq!(map.asked.get(), Some((Protocol::Tcp, sa(app))));
        let (flow, _) = rewritten(&out);
        assert_eq!((flow.src, flow.dst), (sa(app), sa(client)));
        verify(&after).unwrap();
        spec.src = sa(act);
        let expect = icmp(hop, sa(act).ip(), ty, code, [0; 4], &build(&spec));
        assert_eq!(after, expect);
    }
}

#[test]
fn quoted_udp_without_checksum_stays_without() {
    let mut spec = Spec::new(Protocol::Udp, CLIENT4, ACT4);
    spec.udp_no_csum = true;
    let inner = build(&spec);
    let pkt = icmp(sa(ACT4).ip(), sa(CLIENT4).ip(), 3, 3, [0; 4], &inner);
    let (out, after) = run_map(&pkt, Direction::Reply, ChecksumState::Complete, ACT4, APP4);
    rewritten(&out);
    assert_eq!(&after[28 + 26..28 + 28], &[0, 0]);
    verify(&after).unwrap();
}

#[test]
fn icmp_not_ours_is_left_alone() {
    // An error about a flow that is not mapped.
    let pkt = port_unreachable_v4(1000);
    let map = Map::new("192.168.77.11:8080", APP4);
    let (out, _) = run(&pkt, Direction::Reply, ChecksumState::Complete, &map);
    assert_eq!(out, NOT_OURS_ICMP);
    assert_eq!(map.calls.get(), 1);

    // Echo request and reply, ICMPv6 echo and neighbour solicitation: never looked up.
    let v4: IpAddr = "10.99.1.2".parse().unwrap();
    let v4b: IpAddr = "10.99.1.1".parse().unwrap();
    let v6: IpAddr = "2001:db8:1::2".parse().unwrap();
    let v6b: IpAddr = "2001:db8:1::1".parse().unwrap();
    for pkt in [
        icmp(v4, v4b, 8, 0, [0, 1, 0, 1], b"ping"),
        icmp(v4b, v4, 0, 0, [0, 1, 0, 1], b"ping"),
        icmp(v6, v6b, 128, 0, [0, 1, 0, 1], b"ping"),
        icmp(v6, v6b, 135, 0, [0; 4], &[0; 16]),
    ] {
        for dir in [Direction::Inbound, Direction::Reply] {
            let map = Map::new(APP4, ACT4);
            let (out, _) = run(&pkt, dir, ChecksumState::Complete, &map);
            assert_eq!(out, NOT_OURS_ICMP);
            assert_eq!(map.calls.get(), 0);
        }
    }

    // An error quoting an ICMP echo: not a flow of ours either.
    let echo = icmp(v4, v4b, 8, 0, [0, 1, 0, 1], b"ping");
    let pkt = icmp(v4b, v4, 3, 1, [0; 4], &echo);
    let map = Map::new(APP4, ACT4);
    let (out, _) = run(&pkt, Direction::Reply, ChecksumState::Complete, &map);
    assert_eq!(out, NOT_OURS_ICMP);
    assert_eq!(map.calls.get(), 0);
}

#[test]
fn icmp_quote_of_the_other_family_or_a_later_fragment() {
    let inner6 = build(&Spec::new(Protocol::Udp, CLIENT6, ACT6));
    let pkt = icmp(sa(ACT4).ip(), sa(CLIENT4).ip(), 3, 3, [0; 4], &inner6);
    let (out, _) = run_map(&pkt, Direction::Reply, ChecksumState::Complete, ACT4, APP4);
    assert_eq!(out, Outcome::Malformed(Malformed::BadVersion));

    let mut inner = build(&Spec::new(Protocol::Udp, CLIENT4, ACT4));
    inner[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
    let pkt = icmp(sa(ACT4).ip(), sa(CLIENT4).ip(), 3, 3, [0; 4], &inner);
    let (out, _) = run_map(&pkt, Direction::Reply, ChecksumState::Complete, ACT4, APP4);
    assert_eq!(out, Outcome::Malformed(Malformed::Fragment));
}

/// RFC 4884 pads the quote with zeros to 128 bytes and may append extension objects: those
/// bytes are not the quoted packet and must not be taken for its checksum.
#[test]
fn icmp_padding_after_quote_is_not_the_quote() {
    let mut spec = Spec::new(Protocol::Tcp, CLIENT4, ACT4);
    spec.payload = vec![1; 40];
    let inner = build(&spec);
    // A quoted IP header claiming only 30 bytes: 10 of TCP, followed by zero padding.
    let mut q = inner[..30].to_vec();
    q[2..4].copy_from_slice(&30u16.to_be_bytes());
    let c = pnet_packet::ipv4::checksum(&Ipv4Packet::new(&q[..20]).unwrap());
    q[10..12].copy_from_slice(&c.to_be_bytes());
    q.resize(128, 0);
    let pkt = icmp(sa(ACT4).ip(), sa(CLIENT4).ip(), 3, 3, [0, 32, 0, 0], &q);
    let (out, after) = run_map(&pkt, Direction::Reply, ChecksumState::Complete, ACT4, APP4);
    rewritten(&out);
    // Padding untouched: the bytes where a TCP checksum would be (quote offset 36) are zero.
    assert!(after[28 + 30..].iter().all(|&b| b == 0));
    verify(&after).unwrap();
}

/// Round trip through both directions restores the original bytes (a concrete case of the
/// property test, kept to pinpoint a regression quickly).
#[test]
fn round_trip_concrete() {
    let pkt = build(&Spec::new(Protocol::Tcp, CLIENT4, APP4));
    let (_, mut b) = inbound4(&pkt);
    mirror(&mut b);
    let (_, mut c) = run_map(&b, Direction::Reply, ChecksumState::Complete, ACT4, APP4);
    mirror(&mut c);
    assert_eq!(c, pkt);
}

/// The fuzzing seeds (written by an independent generator) are real packets: every one is
/// translated in both directions and comes out with correct checksums.
#[test]
fn fuzz_seed_packets_translate() {
    let seeds: [&[u8]; 10] = [
        include_bytes!("../../../fuzz/corpus/rewrite/tcp4_syn"),
        include_bytes!("../../../fuzz/corpus/rewrite/tcp4_data_opts"),
        include_bytes!("../../../fuzz/corpus/rewrite/udp4_dns"),
        include_bytes!("../../../fuzz/corpus/rewrite/udp4_first_fragment"),
        include_bytes!("../../../fuzz/corpus/rewrite/tcp6_ext"),
        include_bytes!("../../../fuzz/corpus/rewrite/udp6"),
        include_bytes!("../../../fuzz/corpus/rewrite/icmp4_port_unreach"),
        include_bytes!("../../../fuzz/corpus/rewrite/icmp4_frag_needed"),
        include_bytes!("../../../fuzz/corpus/rewrite/icmp6_too_big"),
        include_bytes!("../../../fuzz/corpus/rewrite/icmp6_unreach_inbound"),
    ];
    for (i, seed) in seeds.iter().enumerate() {
        verify(seed).unwrap_or_else(|e| panic!("seed {i} invalid: {e}"));
        for dir in [Direction::Inbound, Direction::Reply] {
            let mut buf = seed.to_vec();
            let out = rewrite(
                &mut buf,
                dir,
                ChecksumState::Complete,
                |_, a: SocketAddr| {
                    let ip = match a.ip() {
                        IpAddr::V4(_) => "172.16.5.5".parse().unwrap(),
                        IpAddr::V6(_) => "fd00:5::5".parse().unwrap(),
                    };
                    Some((SocketAddr::new(ip, 4242), 7u32))
                },
            );
            rewritten(&out);
            verify(&buf).unwrap_or_else(|e| panic!("seed {i} {dir:?}: {e}"));
        }
    }
}
