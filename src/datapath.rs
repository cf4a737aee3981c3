//! One packet's journey through netnat: which direction it crosses, which service it belongs
//! to, how it is rewritten and which verdict it gets. Kernel-free: the queue layer hands in the
//! packet, this module hands back the decision.

use crate::queue::{Decision, Packet, Verdict};
use crate::service::ServiceTable;
use crate::wire::{self, ChecksumState, Direction, Flow, Kind, Outcome};

/// Netfilter hook numbers as the queue reports them (NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING).
const HOOK_PREROUTING: u8 = 0;
const HOOK_POSTROUTING: u8 = 4;

/// Why a packet was dropped or left untranslated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than the copy range: a payload verdict would shorten it.
    Truncated,
    /// Could not be parsed.
    Malformed(wire::Malformed),
    /// A reply that matches no service: passing it would leak the private address.
    UnmappedReply,
}

/// What happened to one packet, for counters and logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Translated for service `id`.
    Translated {
        id: usize,
        dir: Direction,
        flow: Flow,
        kind: Kind,
    },
    /// Passed unchanged (not ours: e.g. an ICMP error about another flow).
    Passed,
    Dropped(Refusal),
}

/// Decides the fate of one queued packet, rewriting it in place when it is ours.
///
/// `mark` is OR-ed into the packet mark of translated inbound packets, so that one firewall
/// rule can let mapped traffic through a default-drop forward chain.
pub fn handle(table: &ServiceTable, mark: u32, pkt: &mut Packet<'_>) -> (Decision, Event) {
    let dir = match pkt.hook {
        HOOK_PREROUTING => Direction::Inbound,
        HOOK_POSTROUTING => Direction::Reply,
        // Only our two chains queue to us; anything else is not ours to touch.
        _ => return (pass(), Event::Passed),
    };
    if pkt.truncated {
        return (drop(), Event::Dropped(Refusal::Truncated));
    }
    let csum = if pkt.checksum_ready {
        ChecksumState::Complete
    } else {
        ChecksumState::NotReady
    };
    let (indev, outdev) = (pkt.indev, pkt.outdev);
    let outcome = wire::rewrite(pkt.payload, dir, csum, |proto, endpoint| match dir {
        Direction::Inbound => table.inbound(indev, proto, endpoint).map(|e| (e.act, e.id)),
        Direction::Reply => table.reply(outdev, proto, endpoint).map(|e| (e.app, e.id)),
    });
    match outcome {
        Outcome::Rewritten { token, flow, kind } => {
            let mark = (dir == Direction::Inbound).then_some(pkt.mark | mark);
            let decision = Decision {
                verdict: Verdict::Accept,
                modified: true,
                mark,
            };
            (
                decision,
                Event::Translated {
                    id: token,
                    dir,
                    flow,
                    kind,
                },
            )
        }
        // An ICMP error about some other flow, or an inbound packet for an address that is not
        // (or no longer) a service's: the host handles it as if netnat were not there.
        Outcome::NotOurs {
            kind: Kind::IcmpError,
        } => (pass(), Event::Passed),
        Outcome::NotOurs { .. } if dir == Direction::Inbound => (pass(), Event::Passed),
        Outcome::NotOurs { .. } => (drop(), Event::Dropped(Refusal::UnmappedReply)),
        Outcome::Malformed(m) => (drop(), Event::Dropped(Refusal::Malformed(m))),
    }
}

fn pass() -> Decision {
    Decision {
        verdict: Verdict::Accept,
        modified: false,
        mark: None,
    }
}

fn drop() -> Decision {
    Decision {
        verdict: Verdict::Drop,
        modified: false,
        mark: None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::config::parse_service;
    use crate::service::Interfaces;

    struct OnePublic;
    impl Interfaces for OnePublic {
        fn index(&self, name: &str) -> Option<u32> {
            (name == "pub0").then_some(7)
        }
        fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
            (name == "pub0" && !v6).then_some(IpAddr::V4(Ipv4Addr::new(10, 99, 1, 1)))
        }
    }

    fn table() -> ServiceTable {
        let s = parse_service("service pub0 port * 80 TCP 192.168.77.10 8080 0x8000").unwrap();
        ServiceTable::build(&[s], &OnePublic)
    }

    /// A minimal IPv4/TCP SYN with correct checksums.
    fn tcp_syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[32] = 0x50;
        p[33] = 0x02; // SYN
        let ip = pnet_packet::ipv4::Ipv4Packet::new(&p).unwrap();
        let ipc = pnet_packet::ipv4::checksum(&ip);
        let tcp = pnet_packet::tcp::TcpPacket::new(&p[20..]).unwrap();
        let tc = pnet_packet::tcp::ipv4_checksum(&tcp, &src.into(), &dst.into());
        p[10..12].copy_from_slice(&ipc.to_be_bytes());
        p[36..38].copy_from_slice(&tc.to_be_bytes());
        p
    }

    fn packet(payload: &mut [u8], hook: u8, indev: u32, outdev: u32) -> Packet<'_> {
        Packet {
            id: 1,
            hw_protocol: 0x0800,
            hook,
            indev,
            outdev,
            mark: 0x1,
            checksum_ready: true,
            gso: false,
            truncated: false,
            payload,
        }
    }

    #[test]
    fn inbound_syn_is_translated_marked_and_reported() {
        let t = table();
        let mut bytes = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let mut pkt = packet(&mut bytes, HOOK_PREROUTING, 7, 0);
        let (d, e) = handle(&t, 0x4e00, &mut pkt);
        assert_eq!(d.verdict, Verdict::Accept);
        assert!(d.modified);
        assert_eq!(
            d.mark,
            Some(0x4e01),
            "netnat's bits are OR-ed into the existing mark"
        );
        match e {
            Event::Translated {
                id: 0,
                dir: Direction::Inbound,
                flow,
                kind: Kind::Plain { syn: true },
            } => {
                assert_eq!(flow.dst, "10.99.1.1:80".parse().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(&bytes[16..20], &[192, 168, 77, 10]);
        assert_eq!(u16::from_be_bytes([bytes[22], bytes[23]]), 8080);
    }

    #[test]
    fn inbound_on_another_interface_passes_unchanged() {
        let t = table();
        let mut bytes = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let before = bytes.clone();
        let mut pkt = packet(&mut bytes, HOOK_PREROUTING, 8, 0);
        let (d, e) = handle(&t, 0x4e00, &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, e),
            (Verdict::Accept, false, Event::Passed)
        );
        assert_eq!(bytes, before);
    }

    #[test]
    fn unmapped_reply_is_dropped_never_leaked() {
        let t = table();
        // From the right server but the wrong port: no service, so no translation.
        let mut bytes = tcp_syn([192, 168, 77, 10], 9999, [10, 99, 1, 2], 40312);
        let mut pkt = packet(&mut bytes, HOOK_POSTROUTING, 0, 7);
        let (d, e) = handle(&t, 0x4e00, &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(e, Event::Dropped(Refusal::UnmappedReply));
    }

    #[test]
    fn reply_is_translated_without_mark() {
        let t = table();
        let mut bytes = tcp_syn([192, 168, 77, 10], 8080, [10, 99, 1, 2], 40312);
        let mut pkt = packet(&mut bytes, HOOK_POSTROUTING, 0, 7);
        let (d, _) = handle(&t, 0x4e00, &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, d.mark),
            (Verdict::Accept, true, None)
        );
        assert_eq!(&bytes[12..16], &[10, 99, 1, 1]);
        assert_eq!(u16::from_be_bytes([bytes[20], bytes[21]]), 80);
    }

    #[test]
    fn truncated_and_malformed_packets_are_dropped() {
        let t = table();
        let mut bytes = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let mut pkt = packet(&mut bytes, HOOK_PREROUTING, 7, 0);
        pkt.truncated = true;
        let (d, e) = handle(&t, 0, &mut pkt);
        assert_eq!(
            (d.verdict, e),
            (Verdict::Drop, Event::Dropped(Refusal::Truncated))
        );

        let mut short = bytes[..30].to_vec();
        let mut pkt = packet(&mut short, HOOK_PREROUTING, 7, 0);
        let (d, e) = handle(&t, 0, &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(matches!(e, Event::Dropped(Refusal::Malformed(_))), "{e:?}");
    }
}
