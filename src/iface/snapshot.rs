//! The interfaces as the system has them now: name → ifindex, state, the primary address of
//! each family for `*` services, and the other addresses that still receive packets (IPv4
//! secondaries, deprecated IPv6), which keep the connections made to them. A snapshot; the daemon takes a new one when the watcher
//! reports a change.
//!
//! Read with an RTM_GETLINK and an RTM_GETADDR dump over rtnetlink rather than getifaddrs(3):
//! getifaddrs hides the address flags (secondary, tentative, deprecated, DAD failed) that
//! decide which address is the interface's own, and the dump is decoded by the same code as
//! the watcher's notifications.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::msg::{self, AddrMsg, Body, LinkMsg};
use crate::engine::service::Interfaces;
use crate::netlink::Socket;

/// How long one dump may take before `read` gives up (the kernel answers at once; this only
/// keeps a wedged socket from hanging the daemon).
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Dumps retried when the kernel flags them as interrupted by a concurrent change.
const DUMP_ATTEMPTS: usize = 4;
/// Room for one dump datagram: the kernel fills at most 32 KiB per datagram.
const DUMP_BUF: usize = 64 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Iface {
    index: u32,
    /// IFF_* flags.
    flags: u32,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    /// The other valid addresses of both families (not `v4`/`v6`), sorted: see
    /// [`AddrMsg::is_valid`].
    others: Vec<IpAddr>,
}

/// A snapshot of the system's interfaces (the calling thread's network namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    by_name: HashMap<String, Iface>,
}

impl Snapshot {
    /// Reads every interface and its addresses with rtnetlink dumps.
    ///
    /// To miss no change, open the [`Watcher`](super::Watcher) first and read the snapshot
    /// after: a change during the read is then also reported by the watcher.
    pub fn read() -> io::Result<Snapshot> {
        let fd = Socket::open(libc::NETLINK_ROUTE, true, 0)?;
        let port = fd.port_id()?;
        let mut buf = vec![0u8; DUMP_BUF];
        let mut last = None;
        for _ in 0..DUMP_ATTEMPTS {
            let (links, intr_l) = dump(&fd, port, msg::RTM_GETLINK, &mut buf)?;
            let (addrs, intr_a) = dump(&fd, port, msg::RTM_GETADDR, &mut buf)?;
            let snap = Snapshot::from_messages(&links, &addrs);
            if !intr_l && !intr_a {
                return Ok(snap);
            }
            last = Some(snap);
        }
        // Still changing under us after several tries: the last reading is the best there is,
        // and the change that keeps interrupting it is also announced to the watcher.
        Ok(last.unwrap_or_default())
    }

    /// Builds a snapshot from decoded link and address messages (as a dump gives them, in the
    /// kernel's order). Pure: the rules of "the interface's own address" live here.
    ///
    /// - An address counts under the name of the link whose index it carries; addresses of
    ///   unknown indexes are ignored (the link appeared after the link dump).
    /// - Candidates: see [`AddrMsg::is_candidate`] (no secondary/temporary, tentative,
    ///   deprecated, DAD-failed or IPv6 link-local addresses); the own address is IFA_LOCAL,
    ///   so a point-to-point link gives its local end, not the peer.
    /// - Among candidates the widest scope wins. Ties: for IPv4 the first in kernel order (the
    ///   primary `ip addr` lists first); IPv6 has no primary, so the oldest wins (IFA_CACHEINFO
    ///   creation stamp, then kernel order, which is newest first): adding an address does not
    ///   move `*`, but an older address that finishes DAD takes it over.
    pub fn from_messages(links: &[LinkMsg], addrs: &[AddrMsg]) -> Snapshot {
        let mut by_name = HashMap::new();
        let mut names = HashMap::new();
        for l in links.iter().filter(|l| l.new && l.index != 0) {
            let Some(name) = &l.name else { continue };
            names.insert(l.index, name.clone());
            by_name.insert(
                name.clone(),
                Iface {
                    index: l.index,
                    flags: l.flags,
                    v4: None,
                    v6: None,
                    others: Vec::new(),
                },
            );
        }
        // Best candidate so far per (name, family): its rank and address.
        // Scope, creation stamp, position: the smallest wins.
        type Rank = (u8, u32, usize);
        let mut best: HashMap<(&str, bool), (Rank, IpAddr)> = HashMap::new();
        for (order, a) in addrs.iter().enumerate() {
            if !a.new || !a.is_candidate() {
                continue;
            }
            let (Some(name), Some(ip)) = (names.get(&a.index), a.own_address()) else {
                continue;
            };
            // IPv6 lists the newest address of a scope first, and the creation stamp only
            // counts hundredths of a second: among equal stamps the later one is older.
            let rank = if ip.is_ipv6() {
                (a.scope, a.created.unwrap_or(u32::MAX), usize::MAX - order)
            } else {
                (a.scope, 0, order)
            };
            let slot = best
                .entry((name.as_str(), ip.is_ipv6()))
                .or_insert((rank, ip));
            if rank < slot.0 {
                *slot = (rank, ip);
            }
        }
        for ((name, _), (_, ip)) in best {
            if let Some(i) = by_name.get_mut(name) {
                match ip {
                    IpAddr::V4(a) => i.v4 = Some(a),
                    IpAddr::V6(a) => i.v6 = Some(a),
                }
            }
        }
        // Then every other address that still receives packets: a `*` service keeps the
        // connections made to it after `*` moved on (deprecated, demoted, or `*` changed).
        for a in addrs.iter().filter(|a| a.new && a.is_valid()) {
            let (Some(name), Some(ip)) = (names.get(&a.index), a.own_address()) else {
                continue;
            };
            if let Some(i) = by_name.get_mut(name)
                && i.v4.map(IpAddr::V4) != Some(ip)
                && i.v6.map(IpAddr::V6) != Some(ip)
                && !i.others.contains(&ip)
            {
                i.others.push(ip);
            }
        }
        for i in by_name.values_mut() {
            i.others.sort_unstable();
        }
        Snapshot { by_name }
    }

    /// Names of all interfaces in the snapshot.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Whether the interface is administratively up (IFF_UP); None if it does not exist.
    pub fn is_up(&self, name: &str) -> Option<bool> {
        self.by_name.get(name).map(|i| i.flags & msg::IFF_UP != 0)
    }

    /// One line for the log about an interface, e.g.
    /// `ppp0: index 7, up, IPv4 10.99.1.1, no IPv6` or `ppp0: absent`.
    pub fn describe(&self, name: &str) -> String {
        let Some(i) = self.by_name.get(name) else {
            return format!("{name}: absent");
        };
        let v4 = i.v4.map_or("no IPv4".to_string(), |a| format!("IPv4 {a}"));
        let v6 = i.v6.map_or("no IPv6".to_string(), |a| format!("IPv6 {a}"));
        let (up, running) = (i.flags & msg::IFF_UP != 0, i.flags & msg::IFF_RUNNING != 0);
        format!(
            "{name}: index {}, {}, {v4}, {v6}",
            i.index,
            state(up, running)
        )
    }

    /// What changed from `self` to `newer` for the interfaces named, in the order of `names`
    /// (each name once): appearance, disappearance, a new ifindex under the same name, up/down
    /// and carrier, and each family's own address; and, when a family's own address stayed, its
    /// other valid addresses (an address added or deprecated beside it). An interface that
    /// appeared is compared with a down one without addresses, so its addresses and an up
    /// state follow its `Appeared`.
    pub fn diff(&self, newer: &Snapshot, names: &[&str]) -> Vec<Change> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for &name in names {
            if !seen.insert(name) {
                continue;
            }
            let mut push = |kind| {
                out.push(Change {
                    name: name.to_string(),
                    kind,
                })
            };
            let (old, new) = (self.by_name.get(name), newer.by_name.get(name));
            let (old, new) = match (old, new) {
                (None, None) => continue,
                (Some(_), None) => {
                    push(ChangeKind::Gone);
                    continue;
                }
                (None, Some(n)) => {
                    push(ChangeKind::Appeared { index: n.index });
                    (&Iface::default(), n)
                }
                (Some(o), Some(n)) => {
                    if o.index != n.index {
                        push(ChangeKind::Reindexed {
                            old: o.index,
                            new: n.index,
                        });
                    }
                    (o, n)
                }
            };
            const STATE: u32 = msg::IFF_UP | msg::IFF_RUNNING;
            if old.flags & STATE != new.flags & STATE {
                push(ChangeKind::State {
                    up: new.flags & msg::IFF_UP != 0,
                    running: new.flags & msg::IFF_RUNNING != 0,
                });
            }
            if old.v4 != new.v4 {
                push(ChangeKind::Address {
                    v6: false,
                    old: old.v4.map(IpAddr::V4),
                    new: new.v4.map(IpAddr::V4),
                });
            }
            if old.v6 != new.v6 {
                push(ChangeKind::Address {
                    v6: true,
                    old: old.v6.map(IpAddr::V6),
                    new: new.v6.map(IpAddr::V6),
                });
            }
            // A moved own address is the news (the others usually move with it); otherwise the
            // others alone change what the table maps.
            for (v6, moved) in [(false, old.v4 != new.v4), (true, old.v6 != new.v6)] {
                let (o, n) = (old.others_of(v6), new.others_of(v6));
                if !moved && !o.eq(n.clone()) {
                    push(ChangeKind::Others {
                        v6,
                        addrs: n.collect(),
                    });
                }
            }
        }
        out
    }
}

impl Iface {
    fn others_of(&self, v6: bool) -> impl Iterator<Item = IpAddr> + Clone + '_ {
        self.others
            .iter()
            .copied()
            .filter(move |a| a.is_ipv6() == v6)
    }
}

fn state(up: bool, running: bool) -> &'static str {
    match (up, running) {
        (false, _) => "down",
        (true, false) => "up, no carrier",
        (true, true) => "up",
    }
}

/// One change of one interface between two snapshots; `Display` gives the log line, e.g.
/// `ppp0: 10.99.1.1 -> 10.99.1.5`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub kind: ChangeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The name exists now and did not before.
    Appeared { index: u32 },
    /// The name no longer exists.
    Gone,
    /// Same name, another interface (PPP reconnected, or deleted and re-created).
    Reindexed { old: u32, new: u32 },
    /// IFF_UP or IFF_RUNNING (carrier) changed; the new state.
    State { up: bool, running: bool },
    /// The own address of a family changed (None: there is none).
    Address {
        v6: bool,
        old: Option<IpAddr>,
        new: Option<IpAddr>,
    },
    /// The own address of a family stayed, its other valid addresses changed; the new ones.
    Others { v6: bool, addrs: Vec<IpAddr> },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.kind {
            ChangeKind::Appeared { index } => write!(f, "{name}: appeared (index {index})"),
            ChangeKind::Gone => write!(f, "{name}: gone"),
            ChangeKind::Reindexed { old, new } => write!(f, "{name}: index {old} -> {new}"),
            ChangeKind::State { up, running } => {
                write!(f, "{name}: {}", state(*up, *running))
            }
            ChangeKind::Address { v6, old, new } => {
                let none = if *v6 { "(no IPv6)" } else { "(no IPv4)" };
                let show = |a: &Option<IpAddr>| a.map_or(none.to_string(), |a| a.to_string());
                write!(f, "{name}: {} -> {}", show(old), show(new))
            }
            ChangeKind::Others { v6, addrs } => {
                let family = if *v6 { "IPv6" } else { "IPv4" };
                if addrs.is_empty() {
                    write!(f, "{name}: no other {family} address")
                } else {
                    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                    write!(f, "{name}: other {family} addresses {}", list.join(" "))
                }
            }
        }
    }
}

impl Interfaces for Snapshot {
    fn index(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).map(|i| i.index).filter(|&i| i != 0)
    }

    fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
        let i = self.by_name.get(name)?;
        if v6 {
            i.v6.map(IpAddr::V6)
        } else {
            i.v4.map(IpAddr::V4)
        }
    }

    fn others(&self, name: &str, v6: bool) -> Vec<IpAddr> {
        self.by_name
            .get(name)
            .map_or_else(Vec::new, |i| i.others_of(v6).collect())
    }
}

/// Sequence numbers of our requests; distinct per request so a late reply to an abandoned
/// dump is never taken for the current one.
static SEQ: AtomicU32 = AtomicU32::new(1);

/// Runs one dump to its NLMSG_DONE; returns the link and address messages (whichever `kind`
/// asks for) and whether the kernel flagged the dump as interrupted (NLM_F_DUMP_INTR).
fn dump<T: FromBody>(
    fd: &Socket,
    port: u32,
    kind: u16,
    buf: &mut [u8],
) -> io::Result<(Vec<T>, bool)> {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut req = Vec::with_capacity(32);
    msg::dump_request(&mut req, kind, seq);
    fd.send(&req)?;
    let deadline = Instant::now() + DUMP_TIMEOUT;
    let mut out = Vec::new();
    let mut interrupted = false;
    loop {
        let got = match fd.recv(buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !fd.wait_readable(deadline)? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "rtnetlink dump did not complete",
                    ));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if !got.from_kernel {
            continue;
        }
        if got.truncated {
            return Err(invalid("rtnetlink dump datagram larger than the buffer"));
        }
        for m in msg::messages(&buf[..got.len]) {
            let m = m.map_err(|e| invalid(&format!("rtnetlink dump: {e}")))?;
            if m.seq != seq || m.pid != port {
                continue;
            }
            interrupted |= m.flags & msg::NLM_F_DUMP_INTR != 0;
            match m.body {
                Body::Done => return Ok((out, interrupted)),
                Body::Error(0) => {}
                Body::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
                Body::Malformed(e) => return Err(invalid(&format!("rtnetlink dump: {e}"))),
                body => out.extend(T::from_body(body)),
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Picks the messages of one kind out of a dump.
trait FromBody: Sized {
    fn from_body(b: Body) -> Option<Self>;
}

impl FromBody for LinkMsg {
    fn from_body(b: Body) -> Option<Self> {
        match b {
            Body::Link(l) => Some(l),
            _ => None,
        }
    }
}

impl FromBody for AddrMsg {
    fn from_body(b: Body) -> Option<Self> {
        match b {
            Body::Addr(a) => Some(a),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iface::msg::{
        AF_INET, AF_INET6, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_SECONDARY, IFA_F_TENTATIVE,
        IFF_UP,
    };

    fn link(index: u32, name: &str) -> LinkMsg {
        LinkMsg {
            new: true,
            index,
            flags: IFF_UP,
            name: Some(name.into()),
        }
    }

    fn addr(index: u32, a: &str, flags: u32, created: u32) -> AddrMsg {
        let ip: IpAddr = a.parse().unwrap();
        AddrMsg {
            new: true,
            family: if ip.is_ipv6() { AF_INET6 } else { AF_INET },
            prefix_len: 24,
            flags,
            scope: 0,
            index,
            local: ip.is_ipv4().then_some(ip),
            address: Some(ip),
            label: None,
            created: Some(created),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn other_valid_addresses_are_listed_per_family() {
        let snap = Snapshot::from_messages(
            &[link(2, "pub0")],
            &[
                addr(2, "10.99.1.1", 0, 1),
                addr(2, "10.99.1.80", IFA_F_SECONDARY, 2),
                addr(2, "10.99.2.1", 0, 3),
                // Kernel order for IPv6: newest first.
                addr(2, "fd99:1::99", IFA_F_TENTATIVE, 9),
                addr(2, "fd99:1::98", IFA_F_DADFAILED, 8),
                addr(2, "fd99:1::80", 0, 5),
                addr(2, "fd99:1::1", IFA_F_DEPRECATED, 4),
                addr(2, "fe80::1", 0, 1),
            ],
        );
        assert_eq!(snap.address("pub0", false), Some(ips(&["10.99.1.1"])[0]));
        assert_eq!(
            snap.others("pub0", false),
            ips(&["10.99.1.80", "10.99.2.1"])
        );
        // The deprecated address no longer stands for pub0 but still receives its flows;
        // tentative, DAD-failed and link-local addresses do not count.
        assert_eq!(snap.address("pub0", true), Some(ips(&["fd99:1::80"])[0]));
        assert_eq!(snap.others("pub0", true), ips(&["fd99:1::1"]));
        assert!(snap.others("eth9", true).is_empty());
    }

    #[test]
    fn an_added_or_deprecated_address_beside_the_own_one_is_a_change() {
        let links = [link(2, "pub0")];
        let one = Snapshot::from_messages(&links, &[addr(2, "fd99:1::1", 0, 1)]);
        let two = Snapshot::from_messages(
            &links,
            &[addr(2, "fd99:1::80", 0, 5), addr(2, "fd99:1::1", 0, 1)],
        );
        let lines = |a: &Snapshot, b: &Snapshot| -> Vec<String> {
            a.diff(b, &["pub0"]).iter().map(|c| c.to_string()).collect()
        };
        assert_eq!(two.address("pub0", true), one.address("pub0", true));
        assert_eq!(lines(&one, &two), ["pub0: other IPv6 addresses fd99:1::80"]);
        assert_eq!(lines(&two, &one), ["pub0: no other IPv6 address"]);
        // Deprecation moves the own address; that one line says it (the others moved with it).
        let deprecated = Snapshot::from_messages(
            &links,
            &[
                addr(2, "fd99:1::80", 0, 5),
                addr(2, "fd99:1::1", IFA_F_DEPRECATED, 1),
            ],
        );
        assert_eq!(lines(&two, &deprecated), ["pub0: fd99:1::1 -> fd99:1::80"]);
        assert_eq!(deprecated.others("pub0", true), ips(&["fd99:1::1"]));
        assert!(lines(&deprecated, &deprecated).is_empty());
    }
}
