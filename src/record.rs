//! Service records for the log: NetNAT's mapping event and the memory of UDP flows that tells
//! a flow's first packet from the rest. Pure; the daemon decides when to call it.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::wire::Flow;

/// NetNAT's mapping event: `pr:int:srcip:srcport:dstip:dstport:prot`.
///
/// Addresses are written in hex: IPv4 as 8 digits (`0a630102`), IPv6 as 32 digits; ports and
/// the protocol number in decimal. `dst` is the apparent endpoint the client addressed.
pub struct MappingEvent<'a> {
    pub iface: &'a str,
    pub flow: &'a Flow,
}

impl fmt::Display for MappingEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Flow { protocol, src, dst } = self.flow;
        write!(f, "pr:{}:", self.iface)?;
        write_hex_addr(f, src.ip())?;
        write!(f, ":{}:", src.port())?;
        write_hex_addr(f, dst.ip())?;
        write!(f, ":{}:{}", dst.port(), protocol.number())
    }
}

fn write_hex_addr(f: &mut fmt::Formatter<'_>, a: IpAddr) -> fmt::Result {
    match a {
        IpAddr::V4(v4) => write!(f, "{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => write!(f, "{:032x}", u128::from(v6)),
    }
}

/// Seconds a UDP flow may stay silent before its next packet counts as a new flow.
pub const UDP_IDLE_SECS: u32 = 120;
/// Number of UDP flows remembered at once; memory is `SLOTS` × one slot, allocated once.
pub const UDP_FLOW_SLOTS: usize = 16384;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    service: usize,
    client: SocketAddr,
}

#[derive(Clone, Copy)]
struct Slot {
    key: FlowKey,
    last_seen: u32,
}

/// A bounded, direct-mapped memory of recent UDP flows. A flow that collides with another
/// evicts it; the evicted flow's next packet is then reported as new again. That is the price
/// of a bound that holds under a flood of spoofed sources.
pub struct FlowMemory {
    slots: Box<[Option<Slot>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for FlowMemory {
    fn default() -> Self {
        FlowMemory::with_slots(UDP_FLOW_SLOTS)
    }
}

impl FlowMemory {
    /// `slots` is rounded up to a power of two.
    pub fn with_slots(slots: usize) -> FlowMemory {
        let n = slots.max(1).next_power_of_two();
        FlowMemory {
            slots: vec![None; n].into_boxed_slice(),
            hasher: Default::default(),
        }
    }

    /// Records a packet of `client` to `service` at `now` (seconds, any monotonic origin) and
    /// says whether it starts a flow: unseen, or silent for longer than the idle timeout.
    pub fn is_new(&mut self, service: usize, client: SocketAddr, now: u32) -> bool {
        let key = FlowKey { service, client };
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        let i = (h.finish() as usize) & (self.slots.len() - 1);
        let slot = &mut self.slots[i];
        let new = match slot {
            Some(s) if s.key == key => now.wrapping_sub(s.last_seen) > UDP_IDLE_SECS,
            _ => true,
        };
        *slot = Some(Slot {
            key,
            last_seen: now,
        });
        new
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_event_matches_netnat_example() {
        let flow = Flow {
            protocol: Protocol::Tcp,
            src: sa("10.99.1.2:40312"),
            dst: sa("10.99.1.1:80"),
        };
        let rec = MappingEvent {
            iface: "pub0",
            flow: &flow,
        }
        .to_string();
        assert_eq!(rec, "pr:pub0:0a630102:40312:0a630101:80:6");
    }

    #[test]
    fn mapping_event_ipv6_uses_32_hex_digits() {
        let flow = Flow {
            protocol: Protocol::Udp,
            src: sa("[fd99:1::2]:5000"),
            dst: sa("[2001:db8::5]:53"),
        };
        let rec = MappingEvent {
            iface: "eth0",
            flow: &flow,
        }
        .to_string();
        assert_eq!(
            rec,
            "pr:eth0:fd990001000000000000000000000002:5000:20010db8000000000000000000000005:53:17"
        );
    }

    #[test]
    fn udp_flow_is_new_once_then_again_after_idle() {
        let mut m = FlowMemory::with_slots(1024);
        let c = sa("10.0.0.1:1234");
        assert!(m.is_new(0, c, 100));
        assert!(!m.is_new(0, c, 101));
        assert!(!m.is_new(0, c, 101 + UDP_IDLE_SECS));
        assert!(m.is_new(0, c, 102 + 2 * UDP_IDLE_SECS));
        assert!(m.is_new(1, c, 500), "another service is another flow");
    }

    #[test]
    fn memory_stays_bounded_under_many_flows() {
        let mut m = FlowMemory::with_slots(100);
        assert_eq!(m.capacity(), 128);
        for port in 1..=50_000u16 {
            m.is_new(0, SocketAddr::from(([10, 0, 0, 1], port)), 1);
        }
        assert_eq!(m.capacity(), 128);
    }
}
