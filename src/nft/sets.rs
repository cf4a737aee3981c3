//! The sets of netnat's table: their kinds, the fields of their concatenated keys and the
//! elements, kept compactly.
//!
//! The services are not rules but elements of these sets (see [`SetKind`]); a packet's key is
//! looked up in a hash table, so the rule count does not grow with the services. How an element
//! is encoded for netlink is `elements`' business; this module is pure data and uses only
//! `family` (and `expr` for `IFNAMSIZ`).

use std::collections::HashMap;
use std::net::IpAddr;

use super::family::Family;

/// One component of a concatenated set key: what is loaded from the packet, in key order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyField {
    /// `iifname` (datatype `ifname`, IFNAMSIZ bytes, zero-padded).
    IifName,
    /// `oifname`.
    OifName,
    /// `ip daddr` / `ip6 daddr`.
    Daddr(Family),
    /// `ip saddr` / `ip6 saddr`.
    Saddr(Family),
    /// `meta l4proto` (datatype `inet_proto`, one byte).
    L4Proto,
    /// `th dport` (datatype `inet_service`, two bytes, network order).
    Dport,
    /// `th sport`.
    Sport,
    /// `meta iif` (datatype `iface_index`, a u32 in host byte order): the offload sets', which
    /// the kernel fills and netnat only reads back, so a number is as good as a name there.
    Iif,
    /// `meta oif`.
    Oif,
    /// `th sport . th dport` loaded as one 4-byte field (datatype `mark`, for the listing): the
    /// offload flow sets', whose keys would otherwise have six components, more than nft's
    /// concatenated type id can describe (`nft list` would print them shifted).
    Ports,
}

// nft's datatype numbers (nftables' include/datatype.h), from which the concatenated type id is
// built; `nft list` uses it to name the set's type and to print its elements.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_MARK: u32 = 19;
const TYPE_IFINDEX: u32 = 20;
const TYPE_IFNAME: u32 = 41;
/// Bits per component in a concatenated type id (nft's TYPE_BITS).
const TYPE_BITS: u32 = 6;

impl KeyField {
    /// Bytes the load puts into the registers (before padding).
    pub fn loaded_len(self) -> usize {
        match self {
            KeyField::IifName | KeyField::OifName => super::expr::IFNAMSIZ,
            KeyField::Daddr(f) | KeyField::Saddr(f) => f.addr_len(),
            KeyField::L4Proto => 1,
            KeyField::Dport | KeyField::Sport => 2,
            KeyField::Iif | KeyField::Oif | KeyField::Ports => 4,
        }
    }

    /// Bytes the component occupies in the key: registers are 32 bits wide and each component
    /// starts in a register of its own, so every field is padded to a multiple of 4.
    pub fn padded_len(self) -> usize {
        self.loaded_len().next_multiple_of(4)
    }

    /// nft's datatype number of the component.
    pub fn type_id(self) -> u32 {
        match self {
            KeyField::IifName | KeyField::OifName => TYPE_IFNAME,
            KeyField::Daddr(Family::Ipv4) | KeyField::Saddr(Family::Ipv4) => TYPE_IPADDR,
            KeyField::Daddr(Family::Ipv6) | KeyField::Saddr(Family::Ipv6) => TYPE_IP6ADDR,
            KeyField::L4Proto => TYPE_INET_PROTOCOL,
            KeyField::Dport | KeyField::Sport => TYPE_INET_SERVICE,
            KeyField::Iif | KeyField::Oif => TYPE_IFINDEX,
            KeyField::Ports => TYPE_MARK,
        }
    }

    /// nft's name of the component's datatype (`type ...` line of a set).
    pub fn type_name(self) -> &'static str {
        match self {
            KeyField::IifName | KeyField::OifName => "ifname",
            KeyField::Daddr(Family::Ipv4) | KeyField::Saddr(Family::Ipv4) => "ipv4_addr",
            KeyField::Daddr(Family::Ipv6) | KeyField::Saddr(Family::Ipv6) => "ipv6_addr",
            KeyField::L4Proto => "inet_proto",
            KeyField::Dport | KeyField::Sport => "inet_service",
            KeyField::Iif | KeyField::Oif => "iface_index",
            KeyField::Ports => "mark",
        }
    }
}

/// The concatenated type id of a key: each component's datatype shifted in, first component
/// in the most significant position (how nft encodes `type a . b . c`).
pub fn concat_type(key: &[KeyField]) -> u32 {
    key.iter()
        .fold(0, |acc, f| (acc << TYPE_BITS) | f.type_id())
}

/// Length of a concatenated key in bytes (sum of the padded components).
pub fn key_len(key: &[KeyField]) -> usize {
    key.iter().map(|f| f.padded_len()).sum()
}

/// The sets netnat may have in its table, each with a fixed key. A set is only created when it
/// has elements; the install batch deletes the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// Inbound, fixed IPv4 apparent address: `iifname . ip daddr . meta l4proto . th dport`.
    In4,
    /// Inbound, `*` services of family IPv4: `iifname . meta l4proto . th dport`, with
    /// `fib daddr . iif type local` in the rule.
    In4Local,
    /// Inbound, fixed IPv6 apparent address.
    In6,
    /// Inbound, `*` services of family IPv6.
    In6Local,
    /// Replies from IPv4 actual servers: `oifname . ip saddr . meta l4proto . th sport`.
    Out4,
    /// Replies from IPv6 actual servers.
    Out6,
    /// ICMP errors addressed to a fixed IPv4 apparent address: `iifname . ip daddr`.
    IcmpIn4,
    /// ICMPv6 errors addressed to a fixed IPv6 apparent address.
    IcmpIn6,
}

impl SetKind {
    pub const ALL: [SetKind; 8] = [
        SetKind::In4,
        SetKind::In4Local,
        SetKind::In6,
        SetKind::In6Local,
        SetKind::Out4,
        SetKind::Out6,
        SetKind::IcmpIn4,
        SetKind::IcmpIn6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SetKind::In4 => "in4",
            SetKind::In4Local => "in4_local",
            SetKind::In6 => "in6",
            SetKind::In6Local => "in6_local",
            SetKind::Out4 => "out4",
            SetKind::Out6 => "out6",
            SetKind::IcmpIn4 => "icmp_in4",
            SetKind::IcmpIn6 => "icmp_in6",
        }
    }

    pub fn family(self) -> Family {
        match self {
            SetKind::In4 | SetKind::In4Local | SetKind::Out4 | SetKind::IcmpIn4 => Family::Ipv4,
            SetKind::In6 | SetKind::In6Local | SetKind::Out6 | SetKind::IcmpIn6 => Family::Ipv6,
        }
    }

    /// The key's components, in the order the rule loads them.
    pub fn key(self) -> &'static [KeyField] {
        use Family::{Ipv4, Ipv6};
        use KeyField::*;
        match self {
            SetKind::In4 => &[IifName, Daddr(Ipv4), L4Proto, Dport],
            SetKind::In6 => &[IifName, Daddr(Ipv6), L4Proto, Dport],
            SetKind::In4Local | SetKind::In6Local => &[IifName, L4Proto, Dport],
            SetKind::Out4 => &[OifName, Saddr(Ipv4), L4Proto, Sport],
            SetKind::Out6 => &[OifName, Saddr(Ipv6), L4Proto, Sport],
            SetKind::IcmpIn4 => &[IifName, Daddr(Ipv4)],
            SetKind::IcmpIn6 => &[IifName, Daddr(Ipv6)],
        }
    }
}

/// One component value of a set element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    IfName(String),
    Addr(IpAddr),
    Proto(u8),
    /// Host order here.
    Port(u16),
}

/// A named set of netnat's table and its elements (no duplicates, first-seen order).
///
/// The elements are kept compact, since a policy may hold tens of thousands of them and a
/// reload builds a second policy while the running service set is still in memory: each is a
/// 24-byte [`Element`], interface names are stored once per set. [`SetSpec::elements`] gives
/// them as [`KeyValue`] lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    pub kind: SetKind,
    ifnames: Vec<String>,
    elements: Vec<Element>,
}

/// One set element, compactly: the components the set's key does not have are left at their
/// defaults (unspecified address, protocol and port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// Index of the interface name in [`SetSpec::ifnames`].
    pub ifname: u32,
    pub addr: IpAddr,
    pub proto: u8,
    /// Host order here.
    pub port: u16,
}

impl SetSpec {
    /// A set of `kind` with these elements (each in key order), duplicates dropped.
    pub fn from_values(kind: SetKind, elements: &[Vec<KeyValue>]) -> SetSpec {
        let mut list = ElementList::new(kind, elements.len());
        for e in elements {
            assert_eq!(e.len(), kind.key().len(), "{kind:?} {e:?}");
            let mut iface = "";
            let (mut addr, mut proto, mut port) = (UNSPECIFIED, 0, 0);
            for v in e {
                match v {
                    KeyValue::IfName(n) => iface = n,
                    KeyValue::Addr(a) => addr = *a,
                    KeyValue::Proto(p) => proto = *p,
                    KeyValue::Port(p) => port = *p,
                }
            }
            list.push(iface, addr, proto, port);
        }
        list.finish()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// The interface names the elements use, each once.
    pub fn ifnames(&self) -> &[String] {
        &self.ifnames
    }

    /// The elements in compact form, in order.
    pub fn raw(&self) -> &[Element] {
        &self.elements
    }

    /// The interface name of an element of this set.
    pub fn ifname(&self, e: &Element) -> &str {
        &self.ifnames[e.ifname as usize]
    }

    /// An element's component values, in key order.
    pub fn values(&self, e: &Element) -> Vec<KeyValue> {
        self.kind
            .key()
            .iter()
            .map(|f| match f {
                KeyField::IifName | KeyField::OifName => {
                    KeyValue::IfName(self.ifname(e).to_string())
                }
                KeyField::Daddr(_) | KeyField::Saddr(_) => KeyValue::Addr(e.addr),
                KeyField::L4Proto => KeyValue::Proto(e.proto),
                KeyField::Dport | KeyField::Sport => KeyValue::Port(e.port),
                // No set netnat fills has them (see `KeyField::Iif`).
                KeyField::Iif | KeyField::Oif | KeyField::Ports => KeyValue::Port(0),
            })
            .collect()
    }

    /// Every element's component values, in order.
    pub fn elements(&self) -> impl Iterator<Item = Vec<KeyValue>> + '_ {
        self.elements.iter().map(|e| self.values(e))
    }
}

/// The address of elements whose key has none.
pub(super) const UNSPECIFIED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Elements of one set in order while they are collected; duplicates are dropped at the end.
pub(super) struct ElementList<'a> {
    kind: SetKind,
    ifnames: Vec<String>,
    ifname_ids: HashMap<&'a str, u32>,
    /// The interface name of the previous element and its id: services come in runs on the
    /// same interface.
    last: Option<(&'a str, u32)>,
    elements: Vec<Element>,
}

impl<'a> ElementList<'a> {
    pub(super) fn new(kind: SetKind, capacity: usize) -> ElementList<'a> {
        ElementList {
            kind,
            ifnames: Vec::new(),
            ifname_ids: HashMap::new(),
            last: None,
            elements: Vec::with_capacity(capacity),
        }
    }

    fn ifname_id(&mut self, iface: &'a str) -> u32 {
        if let Some((name, id)) = self.last
            && name == iface
        {
            return id;
        }
        let id = match self.ifname_ids.get(iface) {
            Some(&id) => id,
            None => {
                let id = self.ifnames.len() as u32;
                self.ifnames.push(iface.to_string());
                self.ifname_ids.insert(iface, id);
                id
            }
        };
        self.last = Some((iface, id));
        id
    }

    /// Adds an element; the components the set's key lacks are ignored.
    pub(super) fn push(&mut self, iface: &'a str, addr: IpAddr, proto: u8, port: u16) {
        let key = self.kind.key();
        let has = |f: fn(&KeyField) -> bool| key.iter().any(f);
        let e = Element {
            ifname: self.ifname_id(iface),
            addr: if has(|f| matches!(f, KeyField::Daddr(_) | KeyField::Saddr(_))) {
                addr
            } else {
                UNSPECIFIED
            },
            proto: if has(|f| *f == KeyField::L4Proto) {
                proto
            } else {
                0
            },
            port: if has(|f| matches!(f, KeyField::Dport | KeyField::Sport)) {
                port
            } else {
                0
            },
        };
        self.elements.push(e);
    }

    /// The set, each element once, where it first appeared. Duplicates are found by sorting
    /// the positions by element (4 bytes each) rather than with a hash set of the elements,
    /// which for 10,000 services would take ten times the memory while the policy is built.
    pub(super) fn finish(mut self) -> SetSpec {
        let v = &self.elements;
        if v.len() > 1 {
            let mut order: Vec<u32> = (0..v.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| v[a as usize].cmp(&v[b as usize]).then(a.cmp(&b)));
            let mut keep = vec![true; v.len()];
            for w in order.windows(2) {
                if v[w[0] as usize] == v[w[1] as usize] {
                    keep[w[1] as usize] = false;
                }
            }
            let mut i = 0;
            self.elements.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        self.elements.shrink_to_fit();
        SetSpec {
            kind: self.kind,
            ifnames: self.ifnames,
            elements: self.elements,
        }
    }
}

/// A full element (interface, address, protocol, port) as key values, in key order: for the
/// unit tests of this module and of `policy`.
#[cfg(test)]
pub(super) fn values(iface: &str, addr: &str, proto: u8, port: u16) -> Vec<KeyValue> {
    vec![
        KeyValue::IfName(iface.into()),
        KeyValue::Addr(addr.parse().unwrap()),
        KeyValue::Proto(proto),
        KeyValue::Port(port),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_type_ids_and_lengths() {
        // `ifname . ipv4_addr . inet_proto . inet_service` as nft itself encodes it (seen with
        // `nft --debug=mnl add set`).
        assert_eq!(concat_type(SetKind::In4.key()), 0x00a4_730d);
        assert_eq!(key_len(SetKind::In4.key()), 16 + 4 + 4 + 4);
        assert_eq!(key_len(SetKind::In6.key()), 16 + 16 + 4 + 4);
        assert_eq!(key_len(SetKind::In4Local.key()), 16 + 4 + 4);
        assert_eq!(
            concat_type(SetKind::In6Local.key()),
            (TYPE_IFNAME << 12) | (TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE
        );
        // Every key fits the 16 32-bit registers.
        for k in SetKind::ALL {
            assert!(key_len(k.key()) <= 64, "{k:?}");
        }
    }

    #[test]
    fn set_elements_keep_first_seen_order_without_duplicates() {
        let e = |iface: &str, port: u16| values(iface, "10.99.1.1", 6, port);
        let set = SetSpec::from_values(
            SetKind::In4,
            &[
                e("pub1", 90),
                e("pub0", 80),
                e("pub1", 90),
                e("pub0", 70),
                e("pub0", 80),
                e("pub1", 80),
                e("pub0", 70),
            ],
        );
        assert_eq!(
            set.elements().collect::<Vec<_>>(),
            vec![e("pub1", 90), e("pub0", 80), e("pub0", 70), e("pub1", 80)]
        );
        assert_eq!(set.ifnames(), ["pub1", "pub0"]);
    }

    #[test]
    fn components_outside_the_key_do_not_make_elements_differ() {
        let a: IpAddr = "192.168.77.10".parse().unwrap();
        let b: IpAddr = "192.168.77.11".parse().unwrap();
        let mut list = ElementList::new(SetKind::In4Local, 2);
        list.push("pub0", a, 17, 53);
        list.push("pub0", b, 17, 53);
        let set = list.finish();
        assert_eq!(set.len(), 1);
        assert_eq!(set.raw()[0].addr, UNSPECIFIED, "no address in the key");
        let mut list = ElementList::new(SetKind::Out4, 2);
        list.push("pub0", a, 17, 53);
        list.push("pub0", b, 17, 53);
        assert_eq!(list.finish().len(), 2);
    }
}
