//! Decoding of rtnetlink messages (`netnat::iface::msg`) and the snapshot rules built on it
//! (`Snapshot::from_messages`, `diff`), without a kernel: captured datagrams, hand-built
//! messages, and hostile bytes that must never make the decoder panic.

use std::net::IpAddr;

use netnat::engine::service::Interfaces;
use netnat::iface::msg::{
    self, AddrMsg, Body, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_NODAD, IFA_F_PERMANENT,
    IFA_F_SECONDARY, IFA_F_TENTATIVE, IFF_POINTOPOINT, IFF_RUNNING, IFF_UP, LinkMsg, Malformed,
    Message, RT_SCOPE_HOST, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE,
};
use netnat::iface::{Change, ChangeKind, Snapshot};
use proptest::prelude::*;

// Datagrams captured from a 6.18 x86_64 kernel (host byte order: little endian) with a
// multicast rtnetlink socket in a test namespace, while iproute2 ran
//   ip tuntap add mode tun name ppp0
//   ip addr add 10.99.1.1 peer 10.99.1.2 dev ppp0
//   ip addr add 2001:db8::1/64 dev ppp0 nodad
//   ip addr del 10.99.1.1 peer 10.99.1.2 dev ppp0
//   ip link del ppp0
// (a tun device is point-to-point, like a PPP link).
const NEWADDR_V4_P2P: &str = concat!(
    "500000001400000034130d6b603500000220800002000000080001000a630102080002000a6301010900030070707030",
    "00000000080008008000000014000600ffffffffffffffff085f0400085f0400",
);

const NEWADDR_V6_NODAD: &str = concat!(
    "480000001400000000000000000000000a408200020000001400010020010db800000000000000000000000114000600",
    "ffffffffffffffff085f0400085f04000800080082000000",
);

const DELADDR_V4_P2P: &str = concat!(
    "500000001500000034130d6b623500000220800002000000080001000a630102080002000a6301010900030070707030",
    "00000000080008008000000014000600ffffffffffffffff085f0400085f0400",
);

const DELLINK_TUN: &str = concat!(
    "b40200001100000000000000000000000000feff0200000090100000ffffffff09000300707070300000000008000d00",
    "f401000005001000020000000500110000000000050043000000000008000400dc050000080032004400000008003300",
    "ffff000008001b000000000008001e000000000008003d000000000008001f000100000008002800ffff000008002900",
    "0000010008003a000000010008003f0000000100080040000000010008003b000000010008003c00ffff000008004200",
    "0000000008002000010000000500210000000000080023000100000008002f0000000000080030000100000006004400",
    "0000000006004500000000000500270000000000cc001700000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000064000700000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000c002b000500020000000000",
    "380012000800010074756e002c0002000500030001000000050004000000000005000500000000000500060001000000",
    "0500070000000000090006006e6f6f700000000004001a0024000e000000000000000000000000000000000000000000",
    "00000000000000000000000004003e8004004180",
);
fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn one(bytes: &[u8]) -> Message {
    let all: Vec<_> = msg::messages(bytes).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap().expect("decodes")
}

fn addr_body(m: Message) -> AddrMsg {
    match m.body {
        Body::Addr(a) => a,
        other => panic!("not an address message: {other:?}"),
    }
}

/// Decodes every message and discards them; what the fuzz target does.
fn decode_all(bytes: &[u8]) -> usize {
    msg::messages(bytes).count()
}

#[cfg(target_endian = "little")]
mod captured {
    use super::*;

    #[test]
    fn ipv4_point_to_point_address_is_ifa_local_not_the_peer() {
        let m = one(&hex(NEWADDR_V4_P2P));
        assert_eq!((m.kind, m.flags, m.pid), (msg::RTM_NEWADDR, 0, 0x3560));
        let a = addr_body(m);
        assert_eq!(
            a,
            AddrMsg {
                new: true,
                family: msg::AF_INET,
                prefix_len: 32,
                flags: IFA_F_PERMANENT,
                scope: RT_SCOPE_UNIVERSE,
                index: 2,
                local: Some(ip("10.99.1.1")),
                address: Some(ip("10.99.1.2")),
                label: Some("ppp0".into()),
                created: Some(0x045f08),
            }
        );
        assert_eq!(a.own_address(), Some(ip("10.99.1.1")));
        assert!(a.is_candidate());
    }

    #[test]
    fn ipv6_nodad_address_takes_its_flags_from_ifa_flags() {
        let a = addr_body(one(&hex(NEWADDR_V6_NODAD)));
        assert_eq!(a.family, msg::AF_INET6);
        assert_eq!(a.prefix_len, 64);
        assert_eq!(a.flags, IFA_F_PERMANENT | IFA_F_NODAD);
        assert_eq!((a.local, a.address), (None, Some(ip("2001:db8::1"))));
        assert_eq!(a.label, None);
        assert!(a.is_candidate());
    }

    #[test]
    fn address_deletion() {
        let a = addr_body(one(&hex(DELADDR_V4_P2P)));
        assert!(!a.new);
        assert_eq!(a.own_address(), Some(ip("10.99.1.1")));
    }

    #[test]
    fn link_deletion_carries_name_index_and_flags() {
        let m = one(&hex(DELLINK_TUN));
        assert_eq!(m.kind, msg::RTM_DELLINK);
        let Body::Link(l) = m.body else {
            panic!("{m:?}")
        };
        assert_eq!(l.name.as_deref(), Some("ppp0"));
        assert_eq!(l.index, 2);
        assert!(!l.new);
        assert_eq!(l.flags & (IFF_POINTOPOINT | IFF_UP), IFF_POINTOPOINT);
    }

    #[test]
    fn several_messages_in_one_datagram_in_order() {
        let mut d = hex(NEWADDR_V4_P2P);
        d.extend(hex(NEWADDR_V6_NODAD));
        d.extend(hex(DELLINK_TUN));
        let kinds: Vec<u16> = msg::messages(&d).map(|m| m.unwrap().kind).collect();
        assert_eq!(
            kinds,
            [msg::RTM_NEWADDR, msg::RTM_NEWADDR, msg::RTM_DELLINK]
        );
    }

    #[test]
    fn every_prefix_is_a_header_error_never_a_panic() {
        for c in [
            NEWADDR_V4_P2P,
            NEWADDR_V6_NODAD,
            DELADDR_V4_P2P,
            DELLINK_TUN,
        ] {
            let full = hex(c);
            for cut in 1..full.len() {
                let got: Vec<_> = msg::messages(&full[..cut]).collect();
                assert_eq!(got, [Err(Malformed::Header)], "cut at {cut}");
            }
            assert!(msg::messages(&[]).next().is_none());
        }
    }

    #[test]
    fn lying_message_lengths_never_panic() {
        for c in [NEWADDR_V4_P2P, NEWADDR_V6_NODAD, DELLINK_TUN] {
            let full = hex(c);
            for claimed in 0..full.len() as u32 + 64 {
                let mut d = full.clone();
                d[..4].copy_from_slice(&claimed.to_ne_bytes());
                let got: Vec<_> = msg::messages(&d).collect();
                let claimed = claimed as usize;
                if !(16..=full.len()).contains(&claimed) {
                    assert_eq!(got, [Err(Malformed::Header)], "claimed {claimed}");
                } else {
                    // The message is cut at the claimed length; what follows is read as the
                    // next message, which is garbage: no panic, and never more messages than
                    // 16-byte headers fit.
                    assert!(got.len() <= 1 + (full.len() - claimed) / 16 + 1);
                }
            }
        }
    }

    #[test]
    fn lying_attribute_lengths_never_panic() {
        let full = hex(NEWADDR_V4_P2P);
        // The first attribute starts after the header (16) and the ifaddrmsg (8).
        for claimed in [0u16, 1, 3, 57, 200, u16::MAX] {
            let mut d = full.clone();
            d[24..26].copy_from_slice(&claimed.to_ne_bytes());
            let m = one(&d);
            assert_eq!(m.body, Body::Malformed(Malformed::Attribute), "{claimed}");
        }
        // An IFA_ADDRESS of 5 bytes (length 9 covers it and a byte of the next attribute).
        let mut d = full.clone();
        d[24..26].copy_from_slice(&9u16.to_ne_bytes());
        assert!(matches!(one(&d).body, Body::Malformed(_)));
        // 4 bytes: an empty attribute is no IPv4 address.
        let mut d = full;
        d[24..26].copy_from_slice(&4u16.to_ne_bytes());
        assert!(matches!(one(&d).body, Body::Malformed(_)));
    }

    #[test]
    fn random_corruption_of_captured_messages_never_panics() {
        // Deterministic single-byte corruption at every position with a few values.
        for c in [NEWADDR_V4_P2P, NEWADDR_V6_NODAD, DELLINK_TUN] {
            let full = hex(c);
            for at in 0..full.len() {
                for v in [0x00, 0x01, 0x03, 0x7f, 0x80, 0xff] {
                    let mut d = full.clone();
                    d[at] = v;
                    decode_all(&d);
                }
            }
        }
    }
}

/// Hand-built messages in host byte order.
fn nlmsg(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(((16 + body.len()) as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(7u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(body);
    m
}

fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend(((4 + value.len()) as u16).to_ne_bytes());
    a.extend(kind.to_ne_bytes());
    a.extend(value);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

#[test]
fn control_messages() {
    assert_eq!(one(&nlmsg(msg::NLMSG_DONE, 2, &[0; 4])).body, Body::Done);
    assert_eq!(one(&nlmsg(msg::NLMSG_OVERRUN, 0, &[])).body, Body::Overrun);
    assert_eq!(one(&nlmsg(msg::NLMSG_NOOP, 0, &[])).body, Body::Other);
    assert_eq!(one(&nlmsg(999, 0, &[1, 2, 3])).body, Body::Other);
    let err = nlmsg(msg::NLMSG_ERROR, 0, &(-libc::ENOENT).to_ne_bytes());
    assert_eq!(one(&err).body, Body::Error(libc::ENOENT));
    assert_eq!(
        one(&nlmsg(msg::NLMSG_ERROR, 0, &0i32.to_ne_bytes())).body,
        Body::Error(0)
    );
    let short = nlmsg(msg::NLMSG_ERROR, 0, &[0, 0]);
    assert_eq!(one(&short).body, Body::Malformed(Malformed::Body));
    let min = nlmsg(msg::NLMSG_ERROR, 0, &i32::MIN.to_ne_bytes());
    assert_eq!(
        one(&min).body,
        Body::Error(i32::MAX),
        "no overflow on -i32::MIN"
    );
    // Bodies too short for their fixed part; the message after them is still read.
    let mut d = nlmsg(msg::RTM_NEWADDR, 0, &[2, 32, 0]);
    d.push(0); // alignment padding
    d.extend(nlmsg(msg::NLMSG_DONE, 0, &[]));
    let got: Vec<_> = msg::messages(&d).map(|m| m.unwrap().body).collect();
    assert_eq!(got, [Body::Malformed(Malformed::Body), Body::Done]);
    let link = nlmsg(msg::RTM_NEWLINK, 0, &[0; 15]);
    assert_eq!(one(&link).body, Body::Malformed(Malformed::Body));
}

#[test]
fn attribute_type_bits_and_unknown_families() {
    // NLA_F_NESTED / NLA_F_NET_BYTEORDER bits do not change the type.
    let mut body = vec![2, 24, 0, 0];
    body.extend(3u32.to_ne_bytes());
    body.extend(attr(msg::IFA_LOCAL | 0x8000, &[10, 0, 0, 1]));
    let a = addr_body(one(&nlmsg(msg::RTM_NEWADDR, 0, &body)));
    assert_eq!(a.local, Some(ip("10.0.0.1")));
    // Family 4 (not IP): its address attribute is ignored, not misread.
    let mut body = vec![4, 24, 0, 0];
    body.extend(3u32.to_ne_bytes());
    body.extend(attr(1, &[1, 2, 3]));
    let a = addr_body(one(&nlmsg(msg::RTM_NEWADDR, 0, &body)));
    assert_eq!(
        (a.address, a.own_address(), a.is_candidate()),
        (None, None, false)
    );
    // A short IFA_CACHEINFO or IFA_FLAGS is malformed.
    for (kind, len) in [(6u16, 12usize), (8, 2)] {
        let mut body = vec![2, 24, 0, 0];
        body.extend(3u32.to_ne_bytes());
        body.extend(attr(kind, &vec![0; len]));
        let m = one(&nlmsg(msg::RTM_NEWADDR, 0, &body));
        assert_eq!(m.body, Body::Malformed(Malformed::AttributeValue));
    }
}

/// An address message as the kernel dumps it.
fn a(index: u32, addr: &str, flags: u32, scope: u8) -> AddrMsg {
    let ip = ip(addr);
    AddrMsg {
        new: true,
        family: if ip.is_ipv6() {
            msg::AF_INET6
        } else {
            msg::AF_INET
        },
        prefix_len: 24,
        flags,
        scope,
        index,
        local: ip.is_ipv4().then_some(ip),
        address: Some(ip),
        label: None,
        created: None,
    }
}

fn l(index: u32, name: &str, flags: u32) -> LinkMsg {
    LinkMsg {
        new: true,
        index,
        flags,
        name: Some(name.into()),
    }
}

#[test]
fn snapshot_rules_for_the_own_address() {
    let up = IFF_UP | IFF_RUNNING;
    let links = [
        l(1, "lo", up),
        l(2, "eth0", up),
        l(3, "ppp0", up | IFF_POINTOPOINT),
    ];
    let mut p2p = a(3, "10.99.1.2", 0, RT_SCOPE_UNIVERSE);
    p2p.local = Some(ip("10.99.1.1"));
    let mut old_v6 = a(2, "2001:db8::2", IFA_F_PERMANENT, RT_SCOPE_UNIVERSE);
    old_v6.created = Some(100);
    let mut new_v6 = a(2, "2001:db8::1", IFA_F_PERMANENT, RT_SCOPE_UNIVERSE);
    new_v6.created = Some(200);
    let addrs = [
        a(1, "127.0.0.1", 0, RT_SCOPE_HOST),
        a(2, "169.254.1.1", 0, RT_SCOPE_LINK), // wider scope wins, whatever the order
        a(2, "192.0.2.9", IFA_F_SECONDARY, RT_SCOPE_UNIVERSE),
        a(2, "192.0.2.1", 0, RT_SCOPE_UNIVERSE),
        a(2, "198.51.100.1", 0, RT_SCOPE_UNIVERSE), // a later primary
        a(2, "fe80::1", IFA_F_PERMANENT, RT_SCOPE_LINK),
        a(2, "2001:db8::9", IFA_F_TENTATIVE, RT_SCOPE_UNIVERSE),
        a(2, "2001:db8::8", IFA_F_DEPRECATED, RT_SCOPE_UNIVERSE),
        a(
            2,
            "2001:db8::7",
            IFA_F_DADFAILED | IFA_F_TENTATIVE,
            RT_SCOPE_UNIVERSE,
        ),
        a(2, "2001:db8::6", IFA_F_SECONDARY, RT_SCOPE_UNIVERSE), // temporary (privacy)
        new_v6,
        old_v6,
        p2p,
        a(9, "203.0.113.1", 0, RT_SCOPE_UNIVERSE), // unknown index: ignored
    ];
    let s = Snapshot::from_messages(&links, &addrs);
    assert_eq!(s.address("lo", false), Some(ip("127.0.0.1")));
    assert_eq!(s.address("eth0", false), Some(ip("192.0.2.1")));
    assert_eq!(
        s.address("eth0", true),
        Some(ip("2001:db8::2")),
        "the oldest"
    );
    assert_eq!(s.address("ppp0", false), Some(ip("10.99.1.1")), "IFA_LOCAL");
    assert_eq!(s.address("ppp0", true), None);
    assert_eq!(s.index("ppp0"), Some(3));
    assert_eq!(s.index("eth1"), None);
    assert_eq!(
        s.describe("ppp0"),
        "ppp0: index 3, up, IPv4 10.99.1.1, no IPv6"
    );

    // Only link-local / unusable IPv6 addresses: none. Equal stamps: the later in the dump
    // (the kernel lists IPv6 newest first) is older.
    let only = [
        a(2, "fe80::1", 0, RT_SCOPE_LINK),
        a(2, "2001:db8::9", IFA_F_TENTATIVE, 0),
    ];
    let s = Snapshot::from_messages(&links, &only);
    assert_eq!(s.address("eth0", true), None);
    let tie = [a(2, "2001:db8::b", 0, 0), a(2, "2001:db8::a", 0, 0)];
    let s = Snapshot::from_messages(&links, &tie);
    assert_eq!(s.address("eth0", true), Some(ip("2001:db8::a")));

    // Deletion messages and links without a name or index do not count.
    let mut gone = a(2, "192.0.2.1", 0, 0);
    gone.new = false;
    let nameless = LinkMsg {
        name: None,
        ..l(4, "x", up)
    };
    let s = Snapshot::from_messages(&[l(2, "eth0", 0), nameless, l(0, "zero", 0)], &[gone]);
    assert_eq!(s.names().collect::<Vec<_>>(), ["eth0"]);
    assert_eq!(s.address("eth0", false), None);
    assert_eq!(s.is_up("eth0"), Some(false));
    assert_eq!(s.describe("eth0"), "eth0: index 2, down, no IPv4, no IPv6");
}

#[test]
fn diff_and_its_log_lines() {
    let up = IFF_UP | IFF_RUNNING;
    let before = Snapshot::from_messages(
        &[l(5, "ppp0", up), l(6, "eth0", up), l(7, "wg0", up)],
        &[a(5, "10.99.1.1", 0, 0), a(6, "192.0.2.1", 0, 0)],
    );
    let after = Snapshot::from_messages(
        &[l(8, "ppp0", up), l(6, "eth0", IFF_UP), l(9, "tun0", up)],
        &[
            a(8, "10.99.1.5", 0, 0),
            a(6, "192.0.2.1", 0, 0),
            a(6, "2001:db8::1", 0, 0),
        ],
    );
    let lines: Vec<String> = before
        .diff(&after, &["ppp0", "eth0", "wg0", "tun0", "none0", "ppp0"])
        .iter()
        .map(Change::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "ppp0: index 5 -> 8",
            "ppp0: 10.99.1.1 -> 10.99.1.5",
            "eth0: up, no carrier",
            "eth0: (no IPv6) -> 2001:db8::1",
            "wg0: gone",
            "tun0: appeared (index 9)",
            "tun0: up",
        ]
    );
    assert!(before.diff(&before, &["ppp0", "eth0"]).is_empty());
    let back = after.diff(&before, &["eth0"]);
    assert_eq!(
        back.last().unwrap().kind,
        ChangeKind::Address {
            v6: true,
            old: Some(ip("2001:db8::1")),
            new: None
        }
    );
    assert_eq!(
        back.last().unwrap().to_string(),
        "eth0: 2001:db8::1 -> (no IPv6)"
    );
}

/// One message with a sound header of a decoded type around arbitrary body bytes: gets past
/// the header check, so the body decoders meet the garbage.
fn framed(kind: u16, body: &[u8]) -> Vec<u8> {
    nlmsg(kind, 0, body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let n = decode_all(&bytes);
        prop_assert!(n <= bytes.len() / 16 + 1);
    }

    #[test]
    fn random_bodies_behind_sound_headers_never_panic(
        kind in prop::sample::select(vec![
            msg::RTM_NEWLINK, msg::RTM_DELLINK, msg::RTM_NEWADDR, msg::RTM_DELADDR,
            msg::NLMSG_ERROR, msg::NLMSG_DONE,
        ]),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let all: Vec<_> = msg::messages(&framed(kind, &body)).collect();
        prop_assert_eq!(all.len(), 1);
        prop_assert!(all[0].is_ok());
    }

    #[test]
    fn random_attributes_never_panic(
        family in any::<u8>(),
        attrs in proptest::collection::vec(
            (0u16..12, proptest::collection::vec(any::<u8>(), 0..24)), 0..8),
        lie in any::<Option<(usize, u16)>>(),
    ) {
        let mut body = vec![family, 24, 0, 0, 2, 0, 0, 0];
        for (k, v) in &attrs {
            body.extend(attr(*k, v));
        }
        // Optionally overwrite one attribute length with a lie.
        if let (Some((at, len)), false) = (lie, attrs.is_empty()) {
            let mut off = 8;
            for (_, v) in attrs.iter().take(at % attrs.len()) {
                off += (4 + v.len()).div_ceil(4) * 4;
            }
            body[off..off + 2].copy_from_slice(&len.to_ne_bytes());
        }
        let m = one(&framed(msg::RTM_NEWADDR, &body));
        if let Body::Addr(a) = m.body {
            // Whatever was decoded is of the message's family.
            if let Some(x) = a.own_address() {
                prop_assert_eq!(x.is_ipv6(), family == msg::AF_INET6);
            }
        }
    }
}
