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
//! a new one and publishes it whole (see [`crate::engine::consumer`]), so the packet path needs
//! no lock. What the queue threads write together here, the [`FlowMemory`], keeps its flows
//! in the lock-free slot table of [`crate::engine::flows`].
//!
//! An interface can have more than one address that receives packets: IPv4 secondaries, IPv6
//! addresses beside the one `*` takes, deprecated IPv6 addresses. A `*` service answers at all
//! of them (the inbound map holds each), and a connection keeps the address it was made to
//! until it ends or the address is removed, as kernel NAT does, also when `*` moves on
//! (deprecation, a promoted secondary). Which address that was, the table cannot know alone:
//! a [`FlowMemory`] remembers the flows that came to another address than the one replies
//! leave from by default ([`Entry::reply_default`]), and that default stays on the address `*`
//! had while it remains valid ([`ServiceTable::carry_over`]), because every connection made
//! before `*` moved went there. With one address per interface the memory stays empty and is
//! never looked at.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::config::{AppAddr, Flags, Prefix, Protocol, Service};
use crate::engine::flows::{self, Claim, SlotTable};

/// What the table needs to know about the interfaces; supplied from outside (rtnetlink, tests).
pub trait Interfaces {
    /// Current ifindex of the interface with this name.
    fn index(&self, name: &str) -> Option<u32>;
    /// The interface's own primary address of the family (`v6`), for `*` services.
    fn address(&self, name: &str, v6: bool) -> Option<IpAddr>;
    /// The interface's other addresses of the family that still receive packets (IPv4
    /// secondaries, IPv6 addresses beside the primary, deprecated IPv6): a `*` service keeps
    /// the connections made to them. None by default.
    fn others(&self, _name: &str, _v6: bool) -> Vec<IpAddr> {
        Vec::new()
    }
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
    /// A `*` service's other addresses on its interface (see [`Interfaces::others`]): mapped
    /// inbound too, and the addresses a flow may keep. Empty for fixed services and for
    /// interfaces with one address of the family.
    pub others: Box<[IpAddr]>,
    /// The address `*` resolved to before it moved to `app`, while it is still one of
    /// `others`: the connections made before the move went there, so replies of flows the
    /// [`FlowMemory`] does not hold leave from it (see [`ServiceTable::carry_over`]).
    pub held: Option<IpAddr>,
    /// The last apparent port (`app.port()` for one port) and the last actual port
    /// (`act.port()` for one port: every apparent port maps to it).
    pub app_last: u16,
    pub act_last: u16,
    /// Every actual server, `act.ip()` first; one for most services.
    pub servers: Box<[IpAddr]>,
    /// The clients the service is for; empty: every client.
    pub from: Box<[Prefix]>,
}

impl Entry {
    /// The address replies leave from unless the flow memory says otherwise.
    #[inline]
    pub fn reply_default(&self) -> IpAddr {
        self.held.unwrap_or(self.app.ip())
    }

    /// Whether `ip` is one of the service's apparent addresses now.
    #[inline]
    pub fn answers_at(&self, ip: IpAddr) -> bool {
        self.app.ip() == ip || self.others.contains(&ip)
    }

    /// The seed's service: one port to one port at one server, every client. Its packets
    /// need nothing but the entry itself.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.app_last == self.app.port() && self.servers.len() == 1 && self.from.is_empty()
    }

    /// A range mapped onto one actual port: a reply shows the apparent port only the client's
    /// flow knows (see [`FlowMemory::remember_port`]).
    #[inline]
    pub fn is_many_to_one(&self) -> bool {
        self.app_last != self.app.port() && self.act_last == self.act.port()
    }

    /// Whether `client` may use the service: its `from` list holds it, or there is none.
    #[inline]
    pub fn admits(&self, client: IpAddr) -> bool {
        self.from.is_empty() || self.from.iter().any(|p| p.contains(client))
    }

    /// The server of the client's flow: a stateless hash of the client's address and port
    /// ([`server_index`]), so that every packet of the flow, in both directions and across
    /// reloads that keep the list, meets the same server.
    #[inline]
    pub fn server_for(&self, client: SocketAddr) -> IpAddr {
        self.servers[server_index(client, self.servers.len())]
    }

    /// The actual endpoint an inbound packet from `client` to apparent port `port` goes to:
    /// the flow's server, and `act + (port - app)` for a 1:1 range, else the one actual port.
    /// `client` unknown: the first server.
    #[inline]
    pub fn act_for(&self, port: u16, client: Option<SocketAddr>) -> SocketAddr {
        let ip = match client {
            Some(c) if self.servers.len() > 1 => self.server_for(c),
            _ => self.act.ip(),
        };
        let first = self.act.port();
        let port = if self.act_last == first {
            first
        } else {
            // The lookup found `port` within the apparent range, and the ranges have one size.
            first.saturating_add(port.saturating_sub(self.app.port()))
        };
        SocketAddr::new(ip, port)
    }

    /// The apparent port a reply from actual port `port` shows by the 1:1 arithmetic; the
    /// first apparent port for one port, `None` for a many-to-one range (the flow knows).
    #[inline]
    pub fn app_port_for(&self, port: u16) -> Option<u16> {
        let first = self.app.port();
        if self.app_last == first {
            Some(first)
        } else if self.is_many_to_one() {
            None
        } else {
            Some(first.saturating_add(port.saturating_sub(self.act.port())))
        }
    }
}

/// Which of `n` servers serves the flow of `client`: the same for every packet of the flow,
/// in every process, on every reload (a fixed hash, not a seeded one: the choice must survive
/// a restart). A client could pick its server by choosing its port; it could also just
/// connect again, so nothing is lost by that.
#[inline]
pub fn server_index(client: SocketAddr, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let addr = match client.ip() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let mut h = FoldBuild.build_hasher();
    h.write_u64(addr as u64);
    h.write_u64((addr >> 64) as u64);
    h.write_u64(u64::from(client.port()));
    // The high bits of a multiply-fold mix best; reduce by multiplication, not modulo.
    ((u128::from(h.finish()) * n as u128) >> 64) as usize
}

/// Port ranges at one address (a [`Key`] with port 0): sorted by first port, disjoint, each
/// `(first, last, index into the entries)`.
type Ranges = Vec<(u16, u16, u32)>;

/// One direction's lookup: single ports by their exact key, ranges by their address.
#[derive(Debug)]
struct Side {
    exact: HashMap<Key, u32, FoldBuild>,
    ranges: HashMap<Key, Ranges, FoldBuild>,
}

impl Side {
    fn with_capacity(n: usize) -> Side {
        Side {
            exact: HashMap::with_capacity_and_hasher(n, FoldBuild),
            ranges: HashMap::with_hasher(FoldBuild),
        }
    }

    #[inline]
    fn get(&self, ifindex: u32, protocol: Protocol, sa: SocketAddr) -> Option<u32> {
        if let Some(&i) = self.exact.get(&Key::new(ifindex, protocol, sa)) {
            return Some(i);
        }
        if self.ranges.is_empty() {
            return None;
        }
        let ranges = self
            .ranges
            .get(&Key::new(ifindex, protocol, SocketAddr::new(sa.ip(), 0)))?;
        let port = sa.port();
        let after = ranges.partition_point(|r| r.0 <= port);
        let &(_, last, index) = ranges.get(after.checked_sub(1)?)?;
        (port <= last).then_some(index)
    }

    /// The entry that holds any port of `first..=last` at `ip`.
    fn holder(
        &self,
        ifindex: u32,
        protocol: Protocol,
        ip: IpAddr,
        ports: (u16, u16),
    ) -> Option<u32> {
        let (first, last) = ports;
        if let Some(ranges) = self
            .ranges
            .get(&Key::new(ifindex, protocol, SocketAddr::new(ip, 0)))
        {
            let after = ranges.partition_point(|r| r.0 <= last);
            if let Some(&(_, end, index)) = after.checked_sub(1).and_then(|i| ranges.get(i))
                && end >= first
            {
                return Some(index);
            }
        }
        if self.exact.is_empty() {
            return None;
        }
        (first..=last).find_map(|p| {
            self.exact
                .get(&Key::new(ifindex, protocol, SocketAddr::new(ip, p)))
                .copied()
        })
    }

    /// Claims `first..=last` at `ip` for `index` (the caller checked they are free).
    fn insert(
        &mut self,
        ifindex: u32,
        protocol: Protocol,
        ip: IpAddr,
        ports: (u16, u16),
        index: u32,
    ) {
        let (first, last) = ports;
        if first == last {
            self.exact.insert(
                Key::new(ifindex, protocol, SocketAddr::new(ip, first)),
                index,
            );
            return;
        }
        let ranges = self
            .ranges
            .entry(Key::new(ifindex, protocol, SocketAddr::new(ip, 0)))
            .or_default();
        let at = ranges.partition_point(|r| r.0 < first);
        ranges.insert(at, (first, last, index));
    }
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
    inbound: Side,
    reply: Side,
    waiting: Vec<usize>,
    conflicts: Vec<Conflict>,
    /// Whether any entry is draining: the packet path only looks closer when one is.
    has_draining: bool,
    /// Whether any entry has other addresses: only then may the flow memory matter.
    has_others: bool,
    /// Whether any entry is not plain ([`Entry::is_plain`]): only then does the packet path
    /// need the client's endpoint for the lookup's answer.
    needs_client: bool,
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
            inbound: Side::with_capacity(n),
            reply: Side::with_capacity(n),
            waiting: Vec::new(),
            conflicts: Vec::new(),
            has_draining: false,
            has_others: false,
            needs_client: false,
        };
        for (id, s) in services.iter().enumerate() {
            let Some(mut entry) = resolve(id, s, ifaces) else {
                table.waiting.push(id);
                continue;
            };
            let (ifindex, protocol) = (entry.ifindex, entry.protocol);
            let app_ports = (entry.app.port(), entry.app_last);
            let act_ports = (entry.act.port(), entry.act_last);
            let in_holder = table
                .inbound
                .holder(ifindex, protocol, entry.app.ip(), app_ports);
            // Every server's actual endpoint must be free for the replies.
            let out_holder = entry
                .servers
                .iter()
                .find_map(|&ip| table.reply.holder(ifindex, protocol, ip, act_ports));
            entry.draining = id >= first_draining;
            // Check both keys before inserting either: an entry is in both maps or in neither,
            // so that every translated request has its reply translated too.
            let clash = match (in_holder, out_holder) {
                (Some(i), _) => Some((i, Lookup::Inbound)),
                (None, Some(i)) => Some((i, Lookup::Reply)),
                (None, None) => None,
            };
            // One exception: a draining service whose apparent endpoint a configured one took
            // (its actual server changed) keeps translating what its old server still sends.
            // The client answers that, and its answer goes to the new server, which resets the
            // old connection: a clean cut where dropping would leave the client waiting.
            if let (true, Some((i, Lookup::Inbound)), None) = (entry.draining, clash, out_holder) {
                let with = table.entries[i as usize].id;
                table.conflicts.push(Conflict {
                    id,
                    with,
                    direction: Lookup::Inbound,
                });
                table.has_draining = true;
                let index = u32::try_from(table.entries.len()).expect("fewer than 2^32 services");
                for &ip in &entry.servers {
                    table.reply.insert(ifindex, protocol, ip, act_ports, index);
                }
                table.needs_client |= !entry.is_plain();
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
            table.needs_client |= !entry.is_plain();
            let index = u32::try_from(table.entries.len()).expect("fewer than 2^32 services");
            table
                .inbound
                .insert(ifindex, protocol, entry.app.ip(), app_ports, index);
            for &ip in &entry.servers {
                table.reply.insert(ifindex, protocol, ip, act_ports, index);
            }
            table.entries.push(entry);
        }
        // The other addresses last and only where free: a service on the address itself, or a
        // `*` service whose address it is, owns the endpoint; the rest is a courtesy to the
        // connections made there, not a conflict.
        for (index, e) in table.entries.iter().enumerate() {
            let ports = (e.app.port(), e.app_last);
            for &ip in &e.others {
                if table
                    .inbound
                    .holder(e.ifindex, e.protocol, ip, ports)
                    .is_none()
                {
                    table
                        .inbound
                        .insert(e.ifindex, e.protocol, ip, ports, index as u32);
                }
                table.has_others = true;
            }
        }
        // Waiting or conflicting services take no entry.
        table.entries.shrink_to_fit();
        table
    }

    /// Carries over from the table this one replaces, for each `*` entry, the address its
    /// replies leave from by default, while that address is still one of the entry's: `*`
    /// moved (the address was deprecated, or another became primary), but the connections
    /// made before the move were made to the old address and must keep it. Entries are
    /// matched by interface index, protocol, actual endpoint and apparent port; an interface
    /// with a new index (re-created, PPP reconnected) carries nothing.
    pub fn carry_over(mut self, previous: &ServiceTable) -> ServiceTable {
        for e in self.entries.iter_mut().filter(|e| !e.others.is_empty()) {
            let Some(old) = previous.reply(e.ifindex, e.protocol, e.act) else {
                continue;
            };
            let default = old.reply_default();
            if old.app.port() == e.app.port() && default != e.app.ip() && e.answers_at(default) {
                e.held = Some(default);
            }
        }
        self
    }

    /// A table without services.
    pub fn empty() -> ServiceTable {
        ServiceTable {
            entries: Vec::new(),
            inbound: Side::with_capacity(0),
            reply: Side::with_capacity(0),
            waiting: Vec::new(),
            conflicts: Vec::new(),
            has_draining: false,
            has_others: false,
            needs_client: false,
        }
    }

    /// Whether some entry has other addresses (so that a flow may keep one of them).
    #[inline]
    pub fn has_others(&self) -> bool {
        self.has_others
    }

    /// Whether some entry is draining.
    #[inline]
    pub fn has_draining(&self) -> bool {
        self.has_draining
    }

    /// Whether some entry is not plain (a range, several servers, a `from` list): then the
    /// lookups' answer depends on the client too (see [`Entry::act_for`], [`Entry::admits`]).
    #[inline]
    pub fn needs_client(&self) -> bool {
        self.needs_client
    }

    /// Inbound lookup: packet arrived on `ifindex` for `dst` (any port of a range).
    #[inline]
    pub fn inbound(&self, ifindex: u32, protocol: Protocol, dst: SocketAddr) -> Option<&Entry> {
        let index = self.inbound.get(ifindex, protocol, dst)?;
        self.entries.get(index as usize)
    }

    /// Reply lookup: packet leaves through `ifindex` from `src` (any server, any port of an
    /// actual range).
    #[inline]
    pub fn reply(&self, ifindex: u32, protocol: Protocol, src: SocketAddr) -> Option<&Entry> {
        let index = self.reply.get(ifindex, protocol, src)?;
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
    let v6 = s.is_ipv6();
    let (app_ip, others) = match s.app_addr {
        AppAddr::Fixed(a) => (a, Box::default()),
        // An address of the other family would make a service that no packet can match (and a
        // reply rewritten across families): treat it as not there yet.
        AppAddr::Interface => {
            let app = ifaces.address(&s.iface, v6).filter(|a| a.is_ipv6() == v6)?;
            let mut others = ifaces.others(&s.iface, v6);
            others.retain(|a| a.is_ipv6() == v6 && *a != app);
            others.dedup();
            (app, others.into_boxed_slice())
        }
    };
    Some(Entry {
        id,
        ifindex,
        protocol: s.protocol,
        app: SocketAddr::new(app_ip, s.app_port),
        act: SocketAddr::new(s.act_addr, s.act_port),
        flags: s.flags,
        draining: false,
        others,
        held: None,
        app_last: s.app_port_last,
        act_last: s.act_port_last,
        servers: s.servers().collect(),
        from: s.from.clone().into_boxed_slice(),
    })
}

/// Which apparent address each flow of a `*` service came to, for the flows that came to
/// another address than their entry's [`Entry::reply_default`]: their replies must leave from
/// it. One memory is shared by every queue thread, without a lock (the inbound packet of a
/// flow may be handled by one queue and its reply by another: the queues fan out by CPU), and
/// kept across table swaps, so that a flow keeps its address when `*` moves.
///
/// Bounded: at most `limit` flows. A flow may be replaced once it has been idle for its
/// protocol's time (a TCP SYN alone: [`SYN_IDLE_MS`], so that a flood of spoofed SYNs does not
/// hold the memory for long); when there is no room but live flows, a new flow is not
/// remembered (its replies leave from the default address, as without the memory) and
/// [`FlowMemory::refused`] counts it. Keyed with a random seed: the keys come from packets,
/// which could otherwise be chosen to collide.
///
/// How, without a lock: the flows live in a [`SlotTable`] ([`crate::engine::flows`]). A flow's
/// key is a 64-bit keyed hash of (interface, protocol, actual endpoint, client endpoint); its
/// data, a fingerprint of the apparent address the flow came to (16 bits of a keyed hash). A
/// reply takes the one address of its entry (`*` or one of `others`) with that fingerprint.
/// A reader that meets a slot in the middle of a claim passes over it (the value's check is
/// not its key's), and the reply leaves from the entry's default address, as it does when two
/// of the entry's addresses share a fingerprint. A race may cost a flow its remembered address
/// for a packet; it never hands a reply an address that is not its entry's (but for a 1 in
/// 32,768 check collision of two racing flows, which can give another of the entry's own).
pub struct FlowMemory {
    table: SlotTable,
    hasher: RandomState,
}

/// Flows remembered at most, by default. The table has twice as many slots of 16 bytes (2 MiB
/// of address space); only the pages that flows to other addresses touch take memory.
pub const FLOW_LIMIT: usize = 65_536;
/// How long a TCP flow is remembered after its last packet: longer than the usual 2 h
/// keepalive interval, so an idle but open connection keeps its address.
pub const TCP_IDLE_MS: u64 = 7_500_000;
/// How long a TCP flow that has only sent a SYN is remembered.
pub const SYN_IDLE_MS: u64 = 30_000;
/// How long a UDP flow is remembered after its last packet (the kernel's conntrack keeps an
/// answered UDP flow for 120 s).
pub const UDP_IDLE_MS: u64 = 180_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    ifindex: u32,
    protocol: u8,
    /// The actual endpoint (which service) and the client's endpoint (which flow).
    act: SocketAddr,
    client: SocketAddr,
}

impl FlowKey {
    fn new(e: &Entry, client: SocketAddr) -> FlowKey {
        // Flow label and scope id are no part of an endpoint.
        let plain = |sa: SocketAddr| SocketAddr::new(sa.ip(), sa.port());
        FlowKey {
            ifindex: e.ifindex,
            protocol: e.protocol.number(),
            act: plain(e.act),
            client: plain(client),
        }
    }
}

impl Default for FlowMemory {
    fn default() -> Self {
        FlowMemory::new(FLOW_LIMIT)
    }
}

impl FlowMemory {
    /// An empty memory for at most `limit` flows.
    pub fn new(limit: usize) -> FlowMemory {
        FlowMemory {
            table: SlotTable::new(limit),
            hasher: RandomState::new(),
        }
    }

    /// Moves the clock (milliseconds, monotonic, the same origin for every thread) that idle
    /// times are measured by; called once per batch.
    #[inline]
    pub fn set_now(&self, ms: u64) {
        self.table.set_now(ms);
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Slots holding a flow (an expired flow counts until a new one takes its slot).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// New flows not remembered because there was no room but live flows.
    pub fn refused(&self) -> u64 {
        self.table.refused()
    }

    fn tag(&self, e: &Entry, client: SocketAddr) -> u64 {
        self.hasher.hash_one(FlowKey::new(e, client)).max(1)
    }

    fn fingerprint(&self, ip: IpAddr) -> u16 {
        self.hasher.hash_one(ip) as u16
    }

    /// An inbound packet from `client` to `arrived` was translated for `e`; `syn`: a TCP SYN
    /// without ACK. Remembers (or refreshes) the flow when it came to another address than the
    /// one replies leave from by default; otherwise nothing happens.
    #[inline]
    pub fn inbound(&self, e: &Entry, client: SocketAddr, arrived: IpAddr, syn: bool) {
        if e.others.is_empty() || arrived == e.reply_default() {
            return;
        }
        self.remember(e, self.tag(e, client), self.fingerprint(arrived), syn);
    }

    /// An inbound packet from `client` to apparent port `port` of a many-to-one range was
    /// translated for `e`: remembers the port, which the replies (all from the one actual
    /// port) must show. Nothing for other entries.
    #[inline]
    pub fn remember_port(&self, e: &Entry, client: SocketAddr, port: u16, syn: bool) {
        if e.is_many_to_one() {
            self.remember(e, self.port_tag(e, client), port, syn);
        }
    }

    /// The apparent port the flow of `client` came to, for a reply of the many-to-one `e`;
    /// `None` when the memory does not hold the flow.
    #[inline]
    pub fn app_port(&self, e: &Entry, client: SocketAddr) -> Option<u16> {
        if self.is_empty() {
            return None;
        }
        let (_, v) = self.table.find(self.port_tag(e, client))?;
        let port = flows::data(v);
        // A port outside the range is no port of this flow (a check collision).
        (e.app.port()..=e.app_last).contains(&port).then_some(port)
    }

    /// The key of a flow's apparent port: its own key space beside the address fingerprints.
    fn port_tag(&self, e: &Entry, client: SocketAddr) -> u64 {
        self.hasher
            .hash_one((FlowKey::new(e, client), "port"))
            .max(1)
    }

    fn remember(&self, e: &Entry, key: u64, fingerprint: u16, syn: bool) {
        let idle_ms = match e.protocol {
            Protocol::Tcp if syn => SYN_IDLE_MS,
            Protocol::Tcp => TCP_IDLE_MS,
            Protocol::Udp => UDP_IDLE_MS,
        };
        let now = self.table.now();
        let expires = now.saturating_add(idle_ms.div_ceil(1000) as u32);
        // Twice at most: a lost race for a slot is worth one more look, not a loop.
        for _ in 0..2 {
            if let Some((i, old)) = self.table.find(key) {
                // A SYN again (a retransmission, a reused port) does not shorten a live flow.
                let keep = flows::expires(old).max(expires);
                // Lost to another packet of the flow: it refreshed the flow just now.
                self.table
                    .replace(i, old, flows::pack(key, fingerprint, keep));
                return;
            }
            match self
                .table
                .claim(key, flows::pack(key, fingerprint, expires), now)
            {
                Claim::Won(_) | Claim::Full => return,
                Claim::Lost => {}
            }
        }
        self.table.count_refused();
    }

    /// The apparent endpoint for a reply of `e` to `client`: the address the flow came to
    /// while that is still one of the entry's, else the entry's default.
    #[inline]
    pub fn reply(&self, e: &Entry, client: SocketAddr) -> SocketAddr {
        let port = e.app.port();
        let default = SocketAddr::new(e.reply_default(), port);
        if e.others.is_empty() || self.is_empty() {
            return default;
        }
        let Some((_, v)) = self.table.find(self.tag(e, client)) else {
            return default;
        };
        let fp = flows::data(v);
        let mut found = None;
        for ip in std::iter::once(e.app.ip()).chain(e.others.iter().copied()) {
            if self.fingerprint(ip) == fp {
                if found.is_some_and(|f| f != ip) {
                    return default; // two of the entry's addresses look alike
                }
                found = Some(ip);
            }
        }
        found.map_or(default, |ip| SocketAddr::new(ip, port))
    }
}

impl std::fmt::Debug for FlowMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowMemory")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
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
    use std::sync::atomic::Ordering;

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

    /// pub0 (ifindex 2) with its `*` address of each family and the other valid ones.
    struct Multi {
        index: u32,
        v4: &'static str,
        v6: &'static str,
        others: &'static [&'static str],
    }

    impl Interfaces for Multi {
        fn index(&self, name: &str) -> Option<u32> {
            (name == "pub0").then_some(self.index)
        }
        fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
            (name == "pub0").then(|| if v6 { self.v6 } else { self.v4 }.parse().unwrap())
        }
        fn others(&self, name: &str, _v6: bool) -> Vec<IpAddr> {
            // Both families on purpose: the table keeps only the service's.
            let all = self.others.iter().map(|a| a.parse().unwrap());
            if name == "pub0" {
                all.collect()
            } else {
                Vec::new()
            }
        }
    }

    const BEFORE: Multi = Multi {
        index: 2,
        v4: "10.99.1.1",
        v6: "fd99:1::1",
        others: &["10.99.1.80", "fd99:1::80"],
    };
    /// fd99:1::1 deprecated, 10.99.1.1 deleted and 10.99.1.80 promoted.
    const MOVED: Multi = Multi {
        index: 2,
        v4: "10.99.1.80",
        v6: "fd99:1::80",
        others: &["fd99:1::1"],
    };
    /// fd99:1::1 removed too.
    const REMOVED: Multi = Multi {
        index: 2,
        v4: "10.99.1.80",
        v6: "fd99:1::80",
        others: &[],
    };

    #[test]
    fn other_addresses_map_to_the_star_service_and_a_fixed_one_keeps_its_own() {
        let svcs = services(&[
            "service pub0 port * 80 TCP fd00::10 8080",
            "service pub0 port * 80 TCP 192.168.1.10 8080",
            "service pub0 port * 22 TCP 192.168.1.22 22",
            "service pub0 port 10.99.1.80 22 TCP 192.168.1.23 22", // a secondary's own service
        ]);
        let t = ServiceTable::build(&svcs, &BEFORE);
        assert!(t.conflicts().is_empty(), "{:?}", t.conflicts());
        assert!(t.has_others() && !ServiceTable::build(&svcs, &ifaces()).has_others());
        let at = |a: &str| t.inbound(2, Protocol::Tcp, sa(a)).map(|e| e.id);
        assert_eq!(at("[fd99:1::1]:80"), Some(0));
        assert_eq!(at("[fd99:1::80]:80"), Some(0));
        assert_eq!(at("10.99.1.1:80"), Some(1));
        assert_eq!(at("10.99.1.80:80"), Some(1));
        assert_eq!(at("10.99.1.1:22"), Some(2));
        assert_eq!(
            at("10.99.1.80:22"),
            Some(3),
            "the fixed service owns its address"
        );
        let e = t.entry(1).unwrap();
        assert_eq!(e.others.as_ref(), &[ip("10.99.1.80")], "IPv4 only");
        assert_eq!((e.held, e.reply_default()), (None, ip("10.99.1.1")));
        assert!(t.entry(3).unwrap().others.is_empty(), "fixed: no others");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn carry_over_holds_the_old_address_while_it_stays_valid() {
        let svcs = services(&[
            "service pub0 port * 80 TCP fd00::10 8080",
            "service pub0 port * 80 TCP 192.168.1.10 8080",
        ]);
        let before = ServiceTable::build(&svcs, &BEFORE);
        let moved = ServiceTable::build(&svcs, &MOVED).carry_over(&before);
        let v6 = moved.entry(0).unwrap();
        assert_eq!(v6.app, sa("[fd99:1::80]:80"), "`*` is the new address");
        assert_eq!(
            v6.held,
            Some(ip("fd99:1::1")),
            "older flows keep the old one"
        );
        assert_eq!(v6.reply_default(), ip("fd99:1::1"));
        // 10.99.1.1 was deleted: nothing to hold.
        let v4 = moved.entry(1).unwrap();
        assert_eq!((v4.held, v4.reply_default()), (None, ip("10.99.1.80")));
        // Held across further rebuilds while valid.
        let again = ServiceTable::build(&svcs, &MOVED).carry_over(&moved);
        assert_eq!(again.entry(0).unwrap().held, Some(ip("fd99:1::1")));
        // Removed: replies leave from `*` again.
        let removed = ServiceTable::build(&svcs, &REMOVED).carry_over(&again);
        assert_eq!(removed.entry(0).unwrap().held, None);
        assert_eq!(removed.entry(0).unwrap().reply_default(), ip("fd99:1::80"));
        // A re-created interface (new index) carries nothing.
        let recreated = Multi { index: 9, ..MOVED };
        let t = ServiceTable::build(&svcs, &recreated).carry_over(&before);
        assert_eq!(t.entry(0).unwrap().held, None);
        // Without a move, nothing is held either.
        let same = ServiceTable::build(&svcs, &BEFORE).carry_over(&before);
        assert_eq!(same.entry(0).unwrap().held, None);
    }

    #[test]
    fn flow_memory_remembers_only_flows_away_from_the_default_address() {
        let svcs = services(&["service pub0 port * 80 TCP fd00::10 8080"]);
        let before = ServiceTable::build(&svcs, &BEFORE);
        let m = FlowMemory::default();
        let e = before.entry(0).unwrap();
        let (old, new) = (sa("[fd99:1::2]:40000"), sa("[fd99:1::2]:40001"));
        m.inbound(e, old, ip("fd99:1::1"), true);
        assert!(m.is_empty(), "at the default address: nothing to remember");
        assert_eq!(m.reply(e, old), sa("[fd99:1::1]:80"));
        m.inbound(e, new, ip("fd99:1::80"), true);
        assert_eq!(m.len(), 1);
        assert_eq!(m.reply(e, new), sa("[fd99:1::80]:80"));
        assert_eq!(m.reply(e, old), sa("[fd99:1::1]:80"));
        // After the move: the old flow keeps ::1 (held), the new one ::80 (remembered).
        let moved = ServiceTable::build(&svcs, &MOVED).carry_over(&before);
        let e = moved.entry(0).unwrap();
        assert_eq!(m.reply(e, old), sa("[fd99:1::1]:80"));
        assert_eq!(m.reply(e, new), sa("[fd99:1::80]:80"));
        // ::1 removed: a flow remembered there would fall back to `*`.
        m.inbound(e, sa("[fd99:1::3]:5"), ip("fd99:1::80"), false);
        let removed = ServiceTable::build(&svcs, &REMOVED).carry_over(&moved);
        let e = removed.entry(0).unwrap();
        assert_eq!(m.reply(e, old), sa("[fd99:1::80]:80"));
        assert_eq!(m.reply(e, new), sa("[fd99:1::80]:80"));
        // Another service (another actual endpoint) does not see this one's flows.
        let other = services(&["service pub0 port * 80 TCP fd00::11 8080"]);
        let t = ServiceTable::build(&other, &BEFORE);
        assert_eq!(m.reply(t.entry(0).unwrap(), new), sa("[fd99:1::1]:80"));
    }

    #[test]
    fn flow_memory_is_bounded_and_forgets_idle_flows_first() {
        let svcs = services(&["service pub0 port * 53 UDP 192.168.1.53 53"]);
        let t = ServiceTable::build(&svcs, &BEFORE);
        let e = t.entry(0).unwrap();
        let at = ip("10.99.1.80");
        let client = |port| SocketAddr::new(ip("10.99.1.2"), port);
        let m = FlowMemory::new(2);
        m.set_now(0);
        m.inbound(e, client(1), at, false);
        m.inbound(e, client(2), at, false);
        m.inbound(e, client(3), at, false);
        assert_eq!(
            (m.len(), m.refused()),
            (2, 1),
            "full of live flows: refused"
        );
        assert_eq!(m.reply(e, client(3)), sa("10.99.1.1:53"));
        // A packet refreshes its flow; the other one idles out.
        m.set_now(UDP_IDLE_MS - 1);
        m.inbound(e, client(2), at, false);
        m.set_now(UDP_IDLE_MS + 1);
        m.inbound(e, client(4), at, false);
        assert_eq!(m.len(), 2);
        assert_eq!(m.reply(e, client(1)), sa("10.99.1.1:53"), "forgotten");
        assert_eq!(m.reply(e, client(2)), sa("10.99.1.80:53"));
        assert_eq!(m.reply(e, client(4)), sa("10.99.1.80:53"));
        // Full again at once, nothing expired: refused.
        m.inbound(e, client(5), at, false);
        assert_eq!(m.refused(), 2);
    }

    #[test]
    fn a_lone_syn_is_forgotten_sooner_than_an_established_flow() {
        let svcs = services(&["service pub0 port * 80 TCP 192.168.1.10 80"]);
        let t = ServiceTable::build(&svcs, &BEFORE);
        let e = t.entry(0).unwrap();
        let at = ip("10.99.1.80");
        let client = |port| SocketAddr::new(ip("10.99.1.2"), port);
        let m = FlowMemory::new(2);
        m.inbound(e, client(1), at, true); // spoofed SYN, never more
        m.inbound(e, client(2), at, true);
        m.inbound(e, client(2), at, false); // handshake completed
        m.inbound(e, client(2), at, true); // a late SYN does not shorten it
        m.set_now(SYN_IDLE_MS + 1);
        m.inbound(e, client(3), at, true);
        assert_eq!(m.refused(), 0);
        assert_eq!(m.reply(e, client(1)), sa("10.99.1.1:80"));
        assert_eq!(m.reply(e, client(2)), sa("10.99.1.80:80"));
        assert_eq!(m.reply(e, client(3)), sa("10.99.1.80:80"));
    }

    /// pub0 with `*` at 10.99.1.1 and two other addresses: a wrong address would show.
    const THREE: Multi = Multi {
        index: 2,
        v4: "10.99.1.1",
        v6: "fd99:1::1",
        others: &["10.99.1.80", "10.99.1.81"],
    };

    #[test]
    fn two_threads_only_ever_see_their_flows_address_or_the_default() {
        let svcs = services(&["service pub0 port * 53 UDP 192.168.1.53 53"]);
        let t = ServiceTable::build(&svcs, &THREE);
        let e = t.entry(0).unwrap();
        let client = |port: u16| SocketAddr::new(ip("10.99.1.2"), port);
        let came_to = |port: u16| {
            ip(if port.is_multiple_of(3) {
                "10.99.1.80"
            } else {
                "10.99.1.81"
            })
        };
        // Small, so that the threads keep taking each other's slots as flows idle out.
        let m = FlowMemory::new(64);
        let remembered = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for half in 0..2u16 {
                let (m, remembered) = (&m, &remembered);
                scope.spawn(move || {
                    for round in 0..200u64 {
                        // Every 20 rounds the other thread's flows have idled out.
                        m.set_now(round / 20 * (UDP_IDLE_MS + 1000));
                        for port in (0..256u16).filter(|p| p % 2 == half) {
                            m.inbound(e, client(port), came_to(port), false);
                        }
                        for port in 0..256u16 {
                            let got = m.reply(e, client(port));
                            assert_eq!(got.port(), 53);
                            if got.ip() == came_to(port) {
                                remembered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                assert_eq!(got.ip(), ip("10.99.1.1"), "port {port}: {got}");
                            }
                        }
                    }
                });
            }
        });
        assert!(m.len() <= 64, "bounded: {}", m.len());
        assert!(
            remembered.load(Ordering::Relaxed) > 10_000,
            "the memory worked: {}",
            remembered.load(Ordering::Relaxed)
        );
        assert!(m.refused() > 0, "full of live flows at times");
    }

    #[test]
    fn the_memory_is_keyed_with_a_random_seed() {
        let svcs = services(&["service pub0 port * 53 UDP 192.168.1.53 53"]);
        let t = ServiceTable::build(&svcs, &THREE);
        let e = t.entry(0).unwrap();
        let c = sa("10.99.1.2:1000");
        let tags: HashSet<u64> = (0..4).map(|_| FlowMemory::new(8).tag(e, c)).collect();
        assert_eq!(tags.len(), 4);
    }

    #[test]
    fn a_flow_takes_one_slot_and_keeps_its_latest_address() {
        let svcs = services(&["service pub0 port * 53 UDP 192.168.1.53 53"]);
        let t = ServiceTable::build(&svcs, &THREE);
        let e = t.entry(0).unwrap();
        let m = FlowMemory::new(4);
        let c = sa("10.99.1.2:1000");
        for _ in 0..10 {
            m.inbound(e, c, ip("10.99.1.80"), false);
        }
        m.inbound(e, c, ip("10.99.1.81"), false);
        assert_eq!((m.len(), m.refused()), (1, 0));
        assert_eq!(m.reply(e, c), sa("10.99.1.81:53"));
        // An address the entry no longer has falls back to the default.
        let fewer = Multi {
            others: &["10.99.1.80"],
            ..THREE
        };
        let t2 = ServiceTable::build(&svcs, &fewer);
        assert_eq!(m.reply(t2.entry(0).unwrap(), c), sa("10.99.1.1:53"));
    }

    #[test]
    fn ranges_are_found_at_every_port_and_map_one_to_one() {
        let svcs = services(&[
            "service eth0 port * 8000-8009 TCP 192.168.1.10 9000-9009 0x8000",
            "service eth0 port * 80 TCP 192.168.1.10 8080",
            "service eth0 port * 6000-6009 UDP 192.168.1.10 7000",
            "service eth0 port * 8010-8019 TCP 192.168.1.11 9000-9009",
        ]);
        let t = ServiceTable::build(&svcs, &ifaces());
        assert!(t.conflicts().is_empty() && t.needs_client());
        for p in 8000..=8009u16 {
            let e = t
                .inbound(2, Protocol::Tcp, sa(&format!("203.0.113.1:{p}")))
                .unwrap();
            assert_eq!(e.id, 0);
            let act = e.act_for(p, Some(sa("198.51.100.7:40000")));
            assert_eq!(act, SocketAddr::new(ip("192.168.1.10"), 9000 + (p - 8000)));
            let r = t.reply(2, Protocol::Tcp, act).unwrap();
            assert_eq!((r.id, r.app_port_for(act.port())), (0, Some(p)));
        }
        // Around the range: the neighbours are other services or none.
        let at = |proto, a: &str| t.inbound(2, proto, sa(a)).map(|e| e.id);
        assert_eq!(at(Protocol::Tcp, "203.0.113.1:7999"), None);
        assert_eq!(at(Protocol::Tcp, "203.0.113.1:8010"), Some(3));
        assert_eq!(at(Protocol::Tcp, "203.0.113.1:8020"), None);
        assert_eq!(at(Protocol::Tcp, "203.0.113.1:80"), Some(1));
        assert_eq!(at(Protocol::Udp, "203.0.113.1:8005"), None);
        assert_eq!(
            t.reply(2, Protocol::Tcp, sa("192.168.1.10:9010"))
                .map(|e| e.id),
            None
        );
        // Many to one: every apparent port reaches 7000; the reply's port is the flow's.
        let e = t.inbound(2, Protocol::Udp, sa("203.0.113.1:6007")).unwrap();
        assert!(e.is_many_to_one());
        assert_eq!(e.act_for(6007, None), sa("192.168.1.10:7000"));
        let r = t.reply(2, Protocol::Udp, sa("192.168.1.10:7000")).unwrap();
        assert_eq!((r.id, r.app_port_for(7000)), (2, None));
        // The plain service needs nothing but itself.
        assert!(t.entry(1).unwrap().is_plain() && !t.entry(0).unwrap().is_plain());
    }

    #[test]
    fn overlapping_ranges_at_run_time_conflict_first_wins() {
        // `*` resolves to 203.0.113.1, which the fixed range also names.
        let svcs = services(&[
            "service eth0 port 203.0.113.1 8000-8009 TCP 192.168.1.10 9000-9009",
            "service eth0 port * 8009 TCP 192.168.1.20 80",
            "service eth0 port * 7990-8000 TCP 192.168.1.21 80",
            "service eth0 port * 100-200 TCP 192.168.1.10 9005",
            "service eth0 port * 300 TCP 192.168.1.30,192.168.1.10 9009",
            "service eth0 port * 8010-8020 TCP 192.168.1.10 9010-9020",
        ]);
        let t = ServiceTable::build(&svcs, &ifaces());
        let c: Vec<(usize, usize, Lookup)> = t
            .conflicts()
            .iter()
            .map(|c| (c.id, c.with, c.direction))
            .collect();
        assert_eq!(
            c,
            [
                (1, 0, Lookup::Inbound),
                (2, 0, Lookup::Inbound),
                (3, 0, Lookup::Reply),
                (4, 0, Lookup::Reply)
            ]
        );
        // The one left in is whole: no port of a refused service is reachable.
        assert_eq!(t.entries().len(), 2);
        assert!(t.inbound(2, Protocol::Tcp, sa("203.0.113.1:150")).is_none());
        assert!(t.reply(2, Protocol::Tcp, sa("192.168.1.30:9009")).is_none());
        assert_eq!(
            t.inbound(2, Protocol::Tcp, sa("203.0.113.1:8015"))
                .map(|e| e.id),
            Some(5)
        );
    }

    #[test]
    fn several_servers_share_the_flows_and_each_flow_keeps_its_server() {
        let svcs = services(&["service eth0 port * 80 TCP 192.168.1.10,192.168.1.11 8080"]);
        let t = ServiceTable::build(&svcs, &ifaces());
        let e = t.inbound(2, Protocol::Tcp, sa("203.0.113.1:80")).unwrap();
        assert_eq!(&*e.servers, [ip("192.168.1.10"), ip("192.168.1.11")]);
        // Replies from either server are the service's.
        for server in ["192.168.1.10:8080", "192.168.1.11:8080"] {
            assert_eq!(t.reply(2, Protocol::Tcp, sa(server)).map(|r| r.id), Some(0));
        }
        assert!(t.reply(2, Protocol::Tcp, sa("192.168.1.12:8080")).is_none());
        // Five hundred clients: both servers get a fair share; the same client endpoint gets
        // the same server every time, also from a table built again (a reload).
        let again = ServiceTable::build(&svcs, &ifaces());
        let e2 = again
            .inbound(2, Protocol::Tcp, sa("203.0.113.1:80"))
            .unwrap();
        let mut count = [0usize; 2];
        for i in 0..500u32 {
            let client = SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::from(0xc633_6400 + (i % 7))),
                32768 + (i * 37 % 28000) as u16,
            );
            let act = e.act_for(80, Some(client));
            assert_eq!(act.port(), 8080);
            assert_eq!(act, e.act_for(80, Some(client)));
            assert_eq!(act, e2.act_for(80, Some(client)));
            count[usize::from(act.ip() == ip("192.168.1.11"))] += 1;
        }
        assert!(count[0] > 175 && count[1] > 175, "{count:?}");
        // The index is a pure function of the client: fixed values guard it against a change
        // that would move every flow on upgrade.
        assert_eq!(server_index(sa("198.51.100.7:40000"), 1), 0);
        let pinned: Vec<usize> = (0..8)
            .map(|p| server_index(sa(&format!("198.51.100.7:{}", 40000 + p)), 3))
            .collect();
        assert_eq!(
            pinned,
            (0..8)
                .map(|p| server_index(sa(&format!("198.51.100.7:{}", 40000 + p)), 3))
                .collect::<Vec<_>>()
        );
        assert!(pinned.iter().all(|&i| i < 3));
        let v6 = server_index(sa("[2001:db8::7]:40000"), 2);
        assert!(v6 < 2);
    }

    #[test]
    fn from_lists_admit_only_their_clients() {
        let svcs = services(&[
            "service eth0 port * 22 TCP 192.168.1.10 22 from 198.51.100.0/24,203.0.113.7",
            "service eth0 port * 22 TCP fd00::10 22 from 2001:db8:1::/48",
        ]);
        let t = ServiceTable::build(&svcs, &ifaces());
        let e = t.inbound(2, Protocol::Tcp, sa("203.0.113.1:22")).unwrap();
        assert!(e.admits(ip("198.51.100.1")) && e.admits(ip("203.0.113.7")));
        assert!(!e.admits(ip("203.0.113.8")) && !e.admits(ip("2001:db8:1::1")));
        let e = t.inbound(2, Protocol::Tcp, sa("[2001:db8::1]:22")).unwrap();
        assert!(e.admits(ip("2001:db8:1:ffff::1")) && !e.admits(ip("2001:db8:2::1")));
    }

    #[test]
    fn other_addresses_take_a_range_where_it_is_free() {
        let svcs = services(&[
            "service pub0 port * 8000-8009 TCP 192.168.1.10 9000-9009",
            "service pub0 port * 9000-9009 TCP 192.168.1.10 10000-10009",
            "service pub0 port 10.99.1.80 9005 TCP 192.168.1.23 22", // the secondary's own
        ]);
        let t = ServiceTable::build(&svcs, &BEFORE);
        assert!(t.conflicts().is_empty(), "{:?}", t.conflicts());
        let at = |a: &str| t.inbound(2, Protocol::Tcp, sa(a)).map(|e| e.id);
        for a in ["10.99.1.1:8003", "10.99.1.80:8009", "10.99.1.80:8000"] {
            assert_eq!(at(a), Some(0), "{a}");
        }
        assert_eq!(at("10.99.1.80:8010"), None);
        // A range that the secondary's own service overlaps stays off the secondary whole.
        assert_eq!(at("10.99.1.1:9001"), Some(1));
        assert_eq!(at("10.99.1.80:9005"), Some(2));
        assert_eq!(at("10.99.1.80:9001"), None);
    }

    #[test]
    fn many_to_one_flows_remember_their_apparent_port() {
        let svcs = services(&["service eth0 port * 6000-6009 UDP 192.168.1.10 7000"]);
        let t = ServiceTable::build(&svcs, &ifaces());
        let e = t.entry(0).unwrap();
        let m = FlowMemory::new(64);
        m.set_now(1_000);
        let (a, b) = (sa("198.51.100.7:5000"), sa("198.51.100.7:5001"));
        assert_eq!(m.app_port(e, a), None, "nothing remembered yet");
        m.remember_port(e, a, 6003, false);
        m.remember_port(e, b, 6009, false);
        assert_eq!(
            (m.app_port(e, a), m.app_port(e, b)),
            (Some(6003), Some(6009))
        );
        // The latest port of a flow wins; a plain entry remembers nothing.
        m.remember_port(e, a, 6004, false);
        assert_eq!(m.app_port(e, a), Some(6004));
        let plain = services(&["service eth0 port * 53 UDP 192.168.1.10 53"]);
        let pt = ServiceTable::build(&plain, &ifaces());
        let before = m.len();
        m.remember_port(pt.entry(0).unwrap(), a, 53, false);
        assert_eq!(m.len(), before);
        // Another many-to-one service's flows are its own, even from the same client.
        let other = services(&["service eth0 port * 5000-5009 UDP 192.168.1.10 7001"]);
        let ot = ServiceTable::build(&other, &ifaces());
        assert_eq!(m.app_port(ot.entry(0).unwrap(), a), None);
    }

    #[test]
    fn table_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<ServiceTable>();
        shared::<FlowMemory>();
    }
}
