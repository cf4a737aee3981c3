//! Property tests over random packets. Each property runs 10,000 cases; packets stay small so
//! that the whole set runs in seconds even in a debug build.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

/// An address of the family `v6`.
fn addr(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any::<[u8; 16]>()
            .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)))
            .boxed()
    } else {
        any::<[u8; 4]>()
            .prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)))
            .boxed()
    }
}

fn endpoint(v6: bool) -> impl Strategy<Value = SocketAddr> {
    (addr(v6), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(a, p))
}

fn ext() -> impl Strategy<Value = Ext> {
    prop_oneof![
        (0u8..3).prop_map(Ext::HopByHop),
        (0u8..3).prop_map(Ext::DestOpts),
        Just(Ext::Routing { segments_left: 0 }),
        Just(Ext::Fragment {
            offset: 0,
            more: false
        }),
        (0u8..4).prop_map(Ext::Auth),
    ]
}

/// A random TCP/UDP packet description of family `v6`.
fn spec_of(v6: bool) -> impl Strategy<Value = Spec> {
    (
        protocol(),
        endpoint(v6),
        endpoint(v6),
        proptest::collection::vec(any::<u8>(), 0..40),
        0u8..4,
        proptest::collection::vec(ext(), 0..3),
        any::<u8>(),
        0u8..4,
        any::<bool>(),
    )
        .prop_map(
            |(proto, src, dst, payload, v4_words, exts, flags, tcp_words, no_csum)| {
                // Hop-by-hop options may only come first.
                let v6_ext = exts
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| match e {
                        Ext::HopByHop(n) if i > 0 => Ext::DestOpts(n),
                        e => e,
                    })
                    .collect();
                Spec {
                    proto,
                    src,
                    dst,
                    payload,
                    v4_option_words: v4_words,
                    v6_ext,
                    tcp_flags: flags,
                    tcp_option_words: tcp_words,
                    udp_no_csum: no_csum,
                    v4_more_fragments: false,
                }
            },
        )
}

fn spec() -> impl Strategy<Value = Spec> {
    any::<bool>().prop_flat_map(spec_of)
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Inbound), Just(Direction::Reply)]
}

/// The endpoint that `rewrite` looks up for a plain packet.
fn key(spec: &Spec, dir: Direction) -> SocketAddr {
    match dir {
        Direction::Inbound => spec.dst,
        Direction::Reply => spec.src,
    }
}

/// A random ICMP error about `inner`, with the quote cut somewhere after the ports.
/// `matching`: the outer address that the translation may change equals the quoted one.
#[derive(Clone, Debug)]
struct IcmpCase {
    inner: Spec,
    dir: Direction,
    ty: u8,
    cut: u16,
    other: IpAddr,
    peer: IpAddr,
    matching: bool,
}

fn icmp_case() -> impl Strategy<Value = IcmpCase> {
    any::<bool>().prop_flat_map(|v6| {
        (
            spec_of(v6),
            direction(),
            0usize..4,
            any::<u16>(),
            addr(v6),
            addr(v6),
            any::<bool>(),
        )
            .prop_map(move |(inner, dir, t, cut, other, peer, matching)| {
                let ty = if v6 {
                    [1, 2, 3, 4][t]
                } else {
                    [3, 11, 12, 3][t]
                };
                IcmpCase {
                    inner,
                    dir,
                    ty,
                    cut,
                    other,
                    peer,
                    matching,
                }
            })
    })
}

impl IcmpCase {
    /// The quoted packet's endpoint that is looked up.
    fn key(&self) -> SocketAddr {
        match self.dir {
            // Inbound errors quote our replies: their source is the apparent endpoint.
            Direction::Inbound => self.inner.src,
            Direction::Reply => self.inner.dst,
        }
    }

    fn build(&self) -> Vec<u8> {
        let quoted = build(&self.inner);
        let (_, _, _, l4, _) = walk(&quoted).unwrap();
        let min = l4 + 8;
        let len = min + usize::from(self.cut) % (quoted.len() - min + 1);
        let translated = if self.matching {
            self.key().ip()
        } else {
            self.other
        };
        let (src, dst) = match self.dir {
            Direction::Inbound => (self.peer, translated),
            Direction::Reply => (translated, self.peer),
        };
        icmp(src, dst, self.ty, 0, [0; 4], &quoted[..len])
    }
}

/// Either kind of packet, with the endpoint that its translation looks up.
#[derive(Clone, Debug)]
enum Case {
    Plain(Spec, Direction),
    Icmp(IcmpCase),
}

impl Case {
    fn build(&self) -> Vec<u8> {
        match self {
            Case::Plain(s, _) => build(s),
            Case::Icmp(c) => c.build(),
        }
    }

    fn key(&self) -> SocketAddr {
        match self {
            Case::Plain(s, d) => key(s, *d),
            Case::Icmp(c) => c.key(),
        }
    }

    fn dir(&self) -> Direction {
        match self {
            Case::Plain(_, d) => *d,
            Case::Icmp(c) => c.dir,
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            Case::Plain(s, _) => s.proto,
            Case::Icmp(c) => c.inner.proto,
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        3 => (spec(), direction()).prop_map(|(s, d)| Case::Plain(s, d)),
        2 => icmp_case().prop_map(Case::Icmp),
    ]
}

/// A case together with a new endpoint of its family.
fn case_and_target() -> impl Strategy<Value = (Case, SocketAddr)> {
    case().prop_flat_map(|c| {
        let v6 = c.key().is_ipv6();
        (Just(c), endpoint(v6))
    })
}

fn lookup_of(
    from: SocketAddr,
    to: SocketAddr,
) -> impl FnOnce(Protocol, SocketAddr) -> Option<(SocketAddr, ())> {
    move |_, a| (a == from).then_some((to, ()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// The incremental update of a complete checksum and the full computation from a
    /// pseudo-header seed give the same bytes.
    #[test]
    fn incremental_and_full_agree(
        mut s in spec(),
        dir in direction(),
        new_port in any::<u16>(),
        new_addr in any::<[u8; 16]>(),
    ) {
        s.udp_no_csum = false;
        let new_ip = if s.src.is_ipv4() {
            IpAddr::V4(Ipv4Addr::new(new_addr[0], new_addr[1], new_addr[2], new_addr[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(new_addr))
        };
        let new = SocketAddr::new(new_ip, new_port);
        let complete = build(&s);
        let mut partial = complete.clone();
        let (src, dst, proto, l4, end) = walk(&partial).unwrap();
        let at = l4 + csum_at(s.proto);
        partial[at..at + 2].copy_from_slice(&seed(src, dst, proto, end - l4).to_be_bytes());

        let mut a = complete.clone();
        let oa = rewrite(&mut a, dir, ChecksumState::Complete, lookup_of(key(&s, dir), new));
        let mut b = partial;
        let ob = rewrite(&mut b, dir, ChecksumState::NotReady, lookup_of(key(&s, dir), new));
        prop_assert!(matches!(oa, Outcome::Rewritten { .. }), "{:?}", oa);
        prop_assert_eq!(oa, ob);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(verify(&a), Ok(()));
    }

    /// Every translated packet, plain or ICMP error, carries correct checksums everywhere,
    /// and the looked-up endpoint is replaced.
    #[test]
    fn rewritten_packets_verify((c, new) in case_and_target(), partial in any::<bool>()) {
        let pkt = c.build();
        let mut buf = pkt.clone();
        let csum = if partial { ChecksumState::NotReady } else { ChecksumState::Complete };
        if partial {
            // Only meaningful for the full computation: start from the seed, as offloaded.
            if let Case::Plain(s, _) = &c
                && !(s.proto == Protocol::Udp && s.udp_no_csum && s.src.is_ipv4())
            {
                let (src, dst, proto, l4, end) = walk(&buf).unwrap();
                let at = l4 + csum_at(s.proto);
                let sd = seed(src, dst, proto, end - l4);
                buf[at..at + 2].copy_from_slice(&sd.to_be_bytes());
            }
        }
        let before = buf.clone();
        let out = rewrite(&mut buf, c.dir(), csum, lookup_of(c.key(), new));
        match out {
            Outcome::Rewritten { flow, .. } => prop_assert_eq!(flow.protocol, c.protocol()),
            other => prop_assert!(false, "not rewritten: {:?}", other),
        }
        prop_assert_eq!(verify(&buf), Ok(()));
        let (_, _, proto, l4, _) = walk(&buf).unwrap();
        // Where the new endpoint must now stand.
        let (base, l4) = if Protocol::from_number(proto).is_some() {
            (0, l4)
        } else {
            let (_, _, _, ql4, _) = walk(&buf[l4 + 8..]).unwrap();
            (l4 + 8, l4 + 8 + ql4)
        };
        let (_, _, _, _, _) = walk(&buf[base..]).unwrap();
        let v4 = new.is_ipv4();
        let src_at = if v4 { 12 } else { 8 };
        let dst_at = if v4 { 16 } else { 24 };
        let n = if v4 { 4 } else { 16 };
        let (addr_at, port_at) = match (&c, c.dir()) {
            (Case::Plain(..), Direction::Inbound) | (Case::Icmp(_), Direction::Reply) => {
                (base + dst_at, l4 + 2)
            }
            _ => (base + src_at, l4),
        };
        prop_assert_eq!(&buf[addr_at..addr_at + n], &octets(new.ip())[..]);
        prop_assert_eq!(field(&buf, port_at), new.port());
        prop_assert_eq!(buf.len(), before.len());
    }

    /// Inbound then reply (or reply then inbound), each on the mirror image of the other's
    /// result, gives back the original bytes: checksums included.
    #[test]
    fn round_trip_restores_the_packet((c, new) in case_and_target()) {
        let old = c.key();
        if let Case::Icmp(ic) = &c {
            // An unrelated outer address equal to the new one would be translated back.
            prop_assume!(ic.matching || ic.other != new.ip());
        }
        let pkt = c.build();
        let mut buf = pkt.clone();
        let out = rewrite(&mut buf, c.dir(), ChecksumState::Complete, lookup_of(old, new));
        prop_assert!(matches!(out, Outcome::Rewritten { .. }), "{:?}", out);
        mirror(&mut buf);
        let back = match c.dir() {
            Direction::Inbound => Direction::Reply,
            Direction::Reply => Direction::Inbound,
        };
        let out = rewrite(&mut buf, back, ChecksumState::Complete, lookup_of(new, old));
        prop_assert!(matches!(out, Outcome::Rewritten { .. }), "{:?}", out);
        mirror(&mut buf);
        prop_assert_eq!(buf, pkt);
    }

    /// Random bytes never panic, never see more than one lookup and are left untouched unless
    /// the outcome is `Rewritten`.
    #[test]
    fn random_bytes_are_safe(
        bytes in proptest::collection::vec(any::<u8>(), 0..120),
        first in prop_oneof![Just(0x45u8), Just(0x46), Just(0x60), any::<u8>()],
        dir in direction(),
        partial in any::<bool>(),
        accept in 0u8..3,
    ) {
        let mut pkt = bytes;
        if let Some(b) = pkt.first_mut() {
            *b = first;
        }
        check_safe(&pkt, dir, partial, accept)?;
    }

    /// Valid packets with a few bytes changed and a random length: the same guarantees.
    #[test]
    fn mutated_packets_are_safe(
        c in case(),
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
        cut in any::<u16>(),
        dir in direction(),
        partial in any::<bool>(),
        accept in 0u8..3,
    ) {
        let mut pkt = c.build();
        for (at, v) in edits {
            let i = usize::from(at) % pkt.len();
            pkt[i] = v;
        }
        let len = pkt.len() - usize::from(cut) % (pkt.len() / 4 + 1);
        pkt.truncate(len.max(1));
        check_safe(&pkt, dir, partial, accept)?;
    }
}

/// Runs `rewrite` on a copy of `pkt` with a lookup that declines (accept 0), accepts with an
/// endpoint of the same family (1) or of the other family (2).
fn check_safe(pkt: &[u8], dir: Direction, partial: bool, accept: u8) -> Result<(), TestCaseError> {
    let mut buf = pkt.to_vec();
    let calls = Cell::new(0u32);
    let csum = if partial {
        ChecksumState::NotReady
    } else {
        ChecksumState::Complete
    };
    let out = rewrite(&mut buf, dir, csum, |_, a: SocketAddr| {
        calls.set(calls.get() + 1);
        let ip = match (accept, a.ip()) {
            (0, _) => return None,
            (1, ip) => ip,
            (_, IpAddr::V4(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (_, IpAddr::V6(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        Some((SocketAddr::new(ip, a.port().wrapping_add(1)), ()))
    });
    prop_assert!(calls.get() <= 1);
    match out {
        Outcome::Rewritten { .. } => prop_assert_eq!(accept, 1),
        _ => prop_assert_eq!(&buf[..], pkt),
    }
    prop_assert_eq!(buf.len(), pkt.len());
    Ok(())
}
