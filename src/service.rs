//! The service table: which apparent endpoint maps to which actual server, resolved against the
//! interfaces as they are now. Built whole and swapped whole on reload or address change.
//!
//! Two hash maps, one per direction, keyed by (ifindex, protocol, address, port):
//! - inbound: a packet that arrived on the public interface for the apparent endpoint;
//! - reply: a packet leaving through the public interface from the actual endpoint.
//!
//! The lookups run once per packet, so they hash with a small multiply-fold hasher written here
//! instead of SipHash, and build their key on the stack (no allocation). Hash flooding is not a
//! concern: only the configuration inserts keys, a packet can only probe, and the table is
//! tiny.
//!
//! The table never changes after [`ServiceTable::build`]; a reload or an address change builds
//! a new one and swaps an `Arc`, so the packet path needs no lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::config::{AppAddr, Flags, Protocol, Service};

/// What the table needs to know about the interfaces; supplied from outside (rtnetlink, tests).
pub trait Interfaces {
    /// Current ifindex of the interface with this name.
    fn index(&self, name: &str) -> Option<u32>;
    /// The interface's own primary address of the family (`v6`), for `*` services.
    fn address(&self, name: &str, v6: bool) -> Option<IpAddr>;
}

/// One service resolved against the current interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index of the service in the slice the table was built from.
    pub id: usize,
    pub ifindex: u32,
    pub protocol: Protocol,
    pub app: SocketAddr,
    pub act: SocketAddr,
    pub flags: Flags,
    /// A service removed from the configuration whose established TCP connections are still
    /// translated until they end (see [`ServiceTable::build_draining`]); it takes no new ones.
    pub draining: bool,
}

/// A service left out of the table because an earlier one already holds one of its keys.
///
/// The configuration file refuses such pairs where it can see them; this still happens when a
/// `*` service resolves to the same address as a fixed service on the same interface, or when
/// services come from elsewhere than a checked file. The earlier service wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The service left out.
    pub id: usize,
    /// The service in the table that holds the same key.
    pub with: usize,
    /// Which key: the same apparent endpoint (`Inbound`) or the same actual endpoint (`Reply`).
    pub direction: Lookup,
}

/// The two lookups of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Inbound,
    Reply,
}

#[derive(Debug)]
pub struct ServiceTable {
    entries: Vec<Entry>,
    /// Index into `entries` (u32: a map slot is then 32 bytes; a configuration file holds far
    /// fewer than 2^32 services).
    inbound: HashMap<Key, u32, FoldBuild>,
    reply: HashMap<Key, u32, FoldBuild>,
    waiting: Vec<usize>,
    conflicts: Vec<Conflict>,
    /// Whether any entry is draining: the packet path only looks closer when one is.
    has_draining: bool,
}

impl ServiceTable {
    /// Resolves every service; those whose interface is absent or has no address of the family
    /// are left out of the lookups and listed by [`ServiceTable::waiting`].
    pub fn build(services: &[Service], ifaces: &impl Interfaces) -> ServiceTable {
        ServiceTable::build_draining(services, services.len(), ifaces)
    }

    /// Like [`ServiceTable::build`], with the services from index `first_draining` on marked as
    /// draining: removed from the configuration, kept so that their established connections
    /// go on. They come last, so a configured service always wins a shared endpoint.
    pub fn build_draining(
        services: &[Service],
        first_draining: usize,
        ifaces: &impl Interfaces,
    ) -> ServiceTable {
        // Sized once: growing by doubling would leave up to half of each unused and, while it
        // grows, hold the old and the new allocation at once (a reload builds this table while
        // the running one is still in use).
        let n = services.len();
        let mut table = ServiceTable {
            entries: Vec::with_capacity(n),
            inbound: HashMap::with_capacity_and_hasher(n, FoldBuild),
            reply: HashMap::with_capacity_and_hasher(n, FoldBuild),
            waiting: Vec::new(),
            conflicts: Vec::new(),
            has_draining: false,
        };
        for (id, s) in services.iter().enumerate() {
            let Some(mut entry) = resolve(id, s, ifaces) else {
                table.waiting.push(id);
                continue;
            };
            let in_key = Key::new(entry.ifindex, entry.protocol, entry.app);
            let out_key = Key::new(entry.ifindex, entry.protocol, entry.act);
            entry.draining = id >= first_draining;
            // Check both keys before inserting either: an entry is in both maps or in neither,
            // so that every translated request has its reply translated too.
            let clash = match (table.inbound.get(&in_key), table.reply.get(&out_key)) {
                (Some(&i), _) => Some((i, Lookup::Inbound)),
                (None, Some(&i)) => Some((i, Lookup::Reply)),
                (None, None) => None,
            };
            // One exception: a draining service whose apparent endpoint a configured one took
            // (its actual server changed) keeps translating what its old server still sends.
            // The client answers that, and its answer goes to the new server, which resets the
            // old connection: a clean cut where dropping would leave the client waiting.
            if let (true, Some((i, Lookup::Inbound)), None) =
                (entry.draining, clash, table.reply.get(&out_key))
            {
                let with = table.entries[i as usize].id;
                table.conflicts.push(Conflict {
                    id,
                    with,
                    direction: Lookup::Inbound,
                });
                table.has_draining = true;
                let index = u32::try_from(table.entries.len()).expect("fewer than 2^32 services");
                table.reply.insert(out_key, index);
                table.entries.push(entry);
                continue;
            }
            if let Some((index, direction)) = clash {
                let with = table.entries[index as usize].id;
                table.conflicts.push(Conflict {
                    id,
                    with,
                    direction,
                });
                continue;
            }
            table.has_draining |= entry.draining;
            let index = u32::try_from(table.entries.len()).expect("fewer than 2^32 services");
            table.inbound.insert(in_key, index);
            table.reply.insert(out_key, index);
            table.entries.push(entry);
        }
        // Waiting or conflicting services take no entry.
        table.entries.shrink_to_fit();
        table
    }

    /// A table without services.
    pub fn empty() -> ServiceTable {
        ServiceTable {
            entries: Vec::new(),
            inbound: HashMap::with_hasher(FoldBuild),
            reply: HashMap::with_hasher(FoldBuild),
            waiting: Vec::new(),
            conflicts: Vec::new(),
            has_draining: false,
        }
    }

    /// Whether some entry is draining.
    #[inline]
    pub fn has_draining(&self) -> bool {
        self.has_draining
    }

    /// Inbound lookup: packet arrived on `ifindex` for `dst`.
    #[inline]
    pub fn inbound(&self, ifindex: u32, protocol: Protocol, dst: SocketAddr) -> Option<&Entry> {
        let index = *self.inbound.get(&Key::new(ifindex, protocol, dst))?;
        self.entries.get(index as usize)
    }

    /// Reply lookup: packet leaves through `ifindex` from `src`.
    #[inline]
    pub fn reply(&self, ifindex: u32, protocol: Protocol, src: SocketAddr) -> Option<&Entry> {
        let index = *self.reply.get(&Key::new(ifindex, protocol, src))?;
        self.entries.get(index as usize)
    }

    /// Ids of services that could not be resolved (interface absent or without address).
    pub fn waiting(&self) -> &[usize] {
        &self.waiting
    }

    /// Services left out because an earlier service holds the same endpoint.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// The resolved services, in the order of the slice the table was built from.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The resolved entry of service `id`, if it is in the table.
    pub fn entry(&self, id: usize) -> Option<&Entry> {
        // Entries are pushed in id order, so a binary search finds them.
        self.entries
            .binary_search_by_key(&id, |e| e.id)
            .ok()
            .map(|i| &self.entries[i])
    }
}

impl Default for ServiceTable {
    fn default() -> Self {
        ServiceTable::empty()
    }
}

fn resolve(id: usize, s: &Service, ifaces: &impl Interfaces) -> Option<Entry> {
    let ifindex = ifaces.index(&s.iface)?;
    let app_ip = match s.app_addr {
        AppAddr::Fixed(a) => a,
        // An address of the other family would make a service that no packet can match (and a
        // reply rewritten across families): treat it as not there yet.
        AppAddr::Interface => ifaces
            .address(&s.iface, s.is_ipv6())
            .filter(|a| a.is_ipv6() == s.is_ipv6())?,
    };
    Some(Entry {
        id,
        ifindex,
        protocol: s.protocol,
        app: SocketAddr::new(app_ip, s.app_port),
        act: SocketAddr::new(s.act_addr, s.act_port),
        flags: s.flags,
        draining: false,
    })
}

/// The lookup key, packed into three machine words. Only address and port count: an IPv6
/// socket address's flow label and scope id are not part of an endpoint. Words rather than a
/// u128 keep the key 8-byte aligned, so that a map slot (key and entry index) takes 32 bytes
/// instead of 48.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    /// The address's low and high 64 bits.
    addr: [u64; 2],
    /// ifindex (32 bits) | port (16) | protocol number (8) | family (8).
    rest: u64,
}

impl Key {
    #[inline]
    fn new(ifindex: u32, protocol: Protocol, sa: SocketAddr) -> Key {
        let (addr, family) = match sa.ip() {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 4u64),
            IpAddr::V6(a) => (u128::from(a), 6u64),
        };
        let rest = u64::from(ifindex) << 32
            | u64::from(sa.port()) << 16
            | u64::from(protocol.number()) << 8
            | family;
        Key {
            addr: [addr as u64, (addr >> 64) as u64],
            rest,
        }
    }
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.addr[0]);
        state.write_u64(self.addr[1]);
        state.write_u64(self.rest);
    }
}

/// Builds [`FoldHasher`]s. Fixed seed: see the module comment on why that is fine here.
#[derive(Clone, Copy, Debug, Default)]
struct FoldBuild;

impl BuildHasher for FoldBuild {
    type Hasher = FoldHasher;
    #[inline]
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0x243f_6a88_85a3_08d3) // digits of pi: any odd, dense constant does
    }
}

/// Multiply-fold hashing: each word is mixed in with one 64×64→128-bit multiplication whose
/// halves are XORed together. Every output bit depends on every input bit, which matters
/// because the map takes its bucket from the low bits and its tag from the high bits, and keys
/// often differ only in a few bits (an IPv6 prefix, a port).
#[derive(Clone, Copy, Debug)]
struct FoldHasher(u64);

const MIX: u64 = 0x9e37_79b9_7f4a_7c15; // 2^64 / golden ratio, odd

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.0 = fold_mul(self.0 ^ word, MIX);
    }

    /// Only [`Key`] is hashed here and it writes whole words; this fallback keeps the hasher
    /// correct for anything else.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One more round so that the last word written is as well mixed as the first.
        fold_mul(self.0, MIX.rotate_left(32) | 1)
    }
}

/// Interfaces for unit tests elsewhere in the crate: `pub0`, ifindex 7, IPv4 10.99.1.1.
#[cfg(test)]
pub(crate) struct OnePublic;

#[cfg(test)]
impl Interfaces for OnePublic {
    fn index(&self, name: &str) -> Option<u32> {
        (name == "pub0").then_some(7)
    }
    fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
        (name == "pub0" && !v6).then_some(IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 1, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_service;
    use std::collections::HashSet;

    /// Interfaces as a test wants them: name → (ifindex, IPv4, IPv6).
    #[derive(Default)]
    struct Fake(HashMap<&'static str, (u32, Option<IpAddr>, Option<IpAddr>)>);

    impl Fake {
        fn with(
            mut self,
            name: &'static str,
            index: u32,
            v4: Option<&str>,
            v6: Option<&str>,
        ) -> Fake {
            let p = |s: Option<&str>| s.map(|a| a.parse().unwrap());
            self.0.insert(name, (index, p(v4), p(v6)));
            self
        }
    }

    impl Interfaces for Fake {
        fn index(&self, name: &str) -> Option<u32> {
            self.0.get(name).map(|e| e.0)
        }
        fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
            self.0.get(name).and_then(|e| if v6 { e.2 } else { e.1 })
        }
    }

    fn services(lines: &[&str]) -> Vec<Service> {
        lines.iter().map(|l| parse_service(l).unwrap()).collect()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ifaces() -> Fake {
        Fake::default()
            .with("eth0", 2, Some("203.0.113.1"), Some("2001:db8::1"))
            .with("ppp0", 7, Some("198.51.100.9"), None)
    }

    #[test]
    fn both_directions_v4_star_and_fixed() {
        let svcs = services(&[
            "service eth0 port * 80 TCP 192.168.1.10 8080 0x8000",
            "service eth0 port 203.0.113.5 53 udp 192.168.1.53 53",
        ]);
        let t = ServiceTable::build(&svcs, &ifaces());
        assert!(t.waiting().is_empty());
        assert!(t.conflicts().is_empty());
        assert_eq!(t.entries().len(), 2);

        let e = t
            .inbound(2, Protocol::Tcp, sa("203.0.113.1:80"))
            .expect("star resolved");
        assert_eq!(e.id, 0);
        assert_eq!(e.act, sa("192.168.1.10:8080"));
        assert_eq!(e.flags, Flags(0x8000));
        let r = t
            .reply(2, Protocol::Tcp, sa("192.168.1.10:8080"))
            .expect("reply");
        assert_eq!(r.app, sa("203.0.113.1:80"));
        assert_eq!(r.id, 0);

        let e = t.inbound(2, Protocol::Udp, sa("203.0.113.5:53")).unwrap();
        assert_eq!((e.id, e.act), (1, sa("192.168.1.53:53")));
        let r = t.reply(2, Protocol::Udp, sa("192.168.1.53:53")).unwrap();
        assert_eq!((r.id, r.app), (1, sa("203.0.113.5:53")));
    }

    #[test]
    fn v6_star_resolves_to_the_v6_address() {
        let svcs = services(&["service eth0 port * 443 TCP fd00::10 443"]);
        let t = ServiceTable::build(&svcs, &ifaces());
        let e = t
            .inbound(2, Protocol::Tcp, sa("[2001:db8::1]:443"))
            .unwrap();
        assert_eq!(e.act, sa("[fd00::10]:443"));
        assert!(t.reply(2, Protocol::Tcp, sa("[fd00::10]:443")).is_some());
        // The v4 address of the same interface is not the v6 service's.
        assert!(t.inbound(2, Protocol::Tcp, sa("203.0.113.1:443")).is_none());
    }

    #[test]
    fn v4_and_v4_mapped_v6_do_not_meet() {
        let svcs = services(&["service eth0 port 203.0.113.5 80 TCP 10.0.0.1 80"]);
        let t = ServiceTable::build(&svcs, &ifaces());
        assert!(t.inbound(2, Protocol::Tcp, sa("203.0.113.5:80")).is_some());
        assert!(
            t.inbound(2, Protocol::Tcp, sa("[::ffff:203.0.113.5]:80"))
                .is_none()
        );
    }

    #[test]
    fn flow_label_and_scope_do_not_matter() {
        let svcs = services(&["service eth0 port 2001:db8::5 80 TCP fd00::1 80"]);
        let t = ServiceTable::build(&svcs, &ifaces());
        let mut dst = std::net::SocketAddrV6::new("2001:db8::5".parse().unwrap(), 80, 0, 0);
        dst.set_flowinfo(0x12345);
        assert!(t.inbound(2, Protocol::Tcp, SocketAddr::V6(dst)).is_some());
    }

    #[test]
    fn waiting_when_interface_absent_or_without_address() {
        let svcs = services(&[
            "service wlan0 port 203.0.113.5 80 TCP 10.0.0.1 80", // no such interface
            "service ppp0 port * 80 TCP fd00::1 80",             // ppp0 has no IPv6 address
            "service ppp0 port * 80 TCP 10.0.0.2 80",            // fine
            "service ppp0 port 2001:db8::7 80 TCP fd00::2 80",   // fixed: needs no address
        ]);
        let t = ServiceTable::build(&svcs, &ifaces());
        assert_eq!(t.waiting(), &[0, 1]);
        let ids: Vec<usize> = t.entries().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![2, 3]);
        assert!(t.entry(0).is_none());
        assert_eq!(t.entry(3).unwrap().ifindex, 7);
        assert!(t.inbound(7, Protocol::Tcp, sa("198.51.100.9:80")).is_some());
        assert!(t.reply(7, Protocol::Tcp, sa("10.0.0.1:80")).is_none());
    }

    #[test]
    fn wrong_family_address_from_interfaces_is_not_used() {
        struct Liar;
        impl Interfaces for Liar {
            fn index(&self, _: &str) -> Option<u32> {
                Some(1)
            }
            fn address(&self, _: &str, _: bool) -> Option<IpAddr> {
                Some("192.0.2.1".parse().unwrap())
            }
        }
        let svcs = services(&["service eth0 port * 80 TCP fd00::1 80"]);
        let t = ServiceTable::build(&svcs, &Liar);
        assert_eq!(t.waiting(), &[0]);
    }

    #[test]
    fn interface_is_followed_by_name_when_its_index_changes() {
        let svcs = services(&["service ppp0 port * 25 TCP 10.0.0.25 25 c000"]);
        let before = ServiceTable::build(&svcs, &ifaces());
        assert!(
            before
                .inbound(7, Protocol::Tcp, sa("198.51.100.9:25"))
                .is_some()
        );
        // PPP reconnected: new index, new address.
        let after_ifaces = Fake::default().with("ppp0", 9, Some("198.51.100.44"), None);
        let after = ServiceTable::build(&svcs, &after_ifaces);
        assert!(
            after
                .inbound(7, Protocol::Tcp, sa("198.51.100.9:25"))
                .is_none()
        );
        assert!(
            after
                .inbound(9, Protocol::Tcp, sa("198.51.100.9:25"))
                .is_none()
        );
        let e = after
            .inbound(9, Protocol::Tcp, sa("198.51.100.44:25"))
            .unwrap();
        assert_eq!(e.flags, Flags(0xc000));
        assert!(after.reply(9, Protocol::Tcp, sa("10.0.0.25:25")).is_some());
        assert!(after.reply(7, Protocol::Tcp, sa("10.0.0.25:25")).is_none());
    }

    #[test]
    fn swapped_ifindex_does_not_match() {
        let svcs = services(&[
            "service eth0 port 203.0.113.5 80 TCP 10.0.0.1 80",
            "service ppp0 port 198.51.100.9 80 TCP 10.0.0.2 80",
        ]);
        let t = ServiceTable::build(&svcs, &ifaces());
        assert_eq!(
            t.inbound(2, Protocol::Tcp, sa("203.0.113.5:80"))
                .unwrap()
                .id,
            0
        );
        assert_eq!(
            t.inbound(7, Protocol::Tcp, sa("198.51.100.9:80"))
                .unwrap()
                .id,
            1
        );
        assert!(t.inbound(7, Protocol::Tcp, sa("203.0.113.5:80")).is_none());
        assert!(t.inbound(2, Protocol::Tcp, sa("198.51.100.9:80")).is_none());
        assert!(t.reply(7, Protocol::Tcp, sa("10.0.0.1:80")).is_none());
        assert!(t.reply(2, Protocol::Tcp, sa("10.0.0.2:80")).is_none());
    }

    #[test]
    fn no_match_for_wrong_protocol_port_or_address() {
        let svcs = services(&["service eth0 port 203.0.113.5 80 TCP 10.0.0.1 8080"]);
        let t = ServiceTable::build(&svcs, &ifaces());
        assert!(t.inbound(2, Protocol::Tcp, sa("203.0.113.5:80")).is_some());
        assert!(t.inbound(2, Protocol::Udp, sa("203.0.113.5:80")).is_none());
        assert!(t.inbound(2, Protocol::Tcp, sa("203.0.113.5:81")).is_none());
        assert!(t.inbound(2, Protocol::Tcp, sa("203.0.113.6:80")).is_none());
        assert!(t.inbound(3, Protocol::Tcp, sa("203.0.113.5:80")).is_none());
        // Directions are separate: the actual endpoint is no inbound key, the apparent no reply key.
        assert!(t.inbound(2, Protocol::Tcp, sa("10.0.0.1:8080")).is_none());
        assert!(t.reply(2, Protocol::Tcp, sa("203.0.113.5:80")).is_none());
        assert!(t.reply(2, Protocol::Udp, sa("10.0.0.1:8080")).is_none());
        assert!(t.reply(2, Protocol::Tcp, sa("10.0.0.1:80")).is_none());
    }

    #[test]
    fn star_colliding_with_fixed_is_a_conflict_first_wins() {
        let svcs = services(&[
            "service eth0 port 203.0.113.1 80 TCP 10.0.0.1 80",
            "service eth0 port * 80 TCP 10.0.0.2 80", // * is 203.0.113.1 too
            "service eth0 port * 81 TCP 10.0.0.1 80", // same actual endpoint as service 0
        ]);
        let t = ServiceTable::build(&svcs, &ifaces());
        assert_eq!(
            t.conflicts(),
            &[
                Conflict {
                    id: 1,
                    with: 0,
                    direction: Lookup::Inbound
                },
                Conflict {
                    id: 2,
                    with: 0,
                    direction: Lookup::Reply
                },
            ]
        );
        assert_eq!(t.entries().len(), 1);
        assert_eq!(
            t.inbound(2, Protocol::Tcp, sa("203.0.113.1:80"))
                .unwrap()
                .id,
            0
        );
        assert!(t.inbound(2, Protocol::Tcp, sa("203.0.113.1:81")).is_none());
        assert!(t.reply(2, Protocol::Tcp, sa("10.0.0.2:80")).is_none());
    }

    #[test]
    fn many_services_all_found() {
        let lines: Vec<String> = (1..=2000u32)
            .map(|i| {
                format!(
                    "service eth0 port 2001:db8::{:x} {} UDP fd00::{:x} 53",
                    i,
                    1000 + i,
                    i
                )
            })
            .collect();
        let svcs: Vec<Service> = lines.iter().map(|l| parse_service(l).unwrap()).collect();
        let t = ServiceTable::build(&svcs, &ifaces());
        assert_eq!(t.entries().len(), 2000);
        for i in 1..=2000u32 {
            let app = SocketAddr::new(
                format!("2001:db8::{i:x}").parse().unwrap(),
                (1000 + i) as u16,
            );
            let act = SocketAddr::new(format!("fd00::{i:x}").parse().unwrap(), 53);
            assert_eq!(t.inbound(2, Protocol::Udp, app).unwrap().act, act);
            assert_eq!(t.reply(2, Protocol::Udp, act).unwrap().app, app);
        }
    }

    #[test]
    fn hasher_spreads_nearby_keys() {
        // Keys differing in one address bit or the port must land in different low bits
        // (buckets) and high bits (tags) most of the time.
        let mut low = HashSet::new();
        let mut high = HashSet::new();
        for i in 0..256u16 {
            let k = Key::new(
                2,
                Protocol::Tcp,
                SocketAddr::new("2001:db8::".parse().unwrap(), i),
            );
            let h = FoldBuild.hash_one(k);
            low.insert(h & 0xff);
            high.insert(h >> 57);
        }
        assert!(low.len() > 140, "low bits poorly spread: {}", low.len());
        assert!(high.len() > 90, "high bits poorly spread: {}", high.len());
    }

    #[test]
    fn table_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<ServiceTable>();
    }
}
