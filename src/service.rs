//! The service table: which apparent endpoint maps to which actual server, resolved against the
//! interfaces as they are now. Built whole and swapped whole on reload or address change.
//!
//! API CONTRACT (other modules are written against it); see the helper's implementation below.

use std::net::{IpAddr, SocketAddr};

use crate::config::{Flags, Protocol, Service};

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
}

pub struct ServiceTable {
    _todo: (),
}

impl ServiceTable {
    /// Resolves every service; those whose interface is absent or has no address of the family
    /// are left out of the lookups and listed by [`ServiceTable::waiting`].
    pub fn build(services: &[Service], ifaces: &impl Interfaces) -> ServiceTable {
        let _ = (services, ifaces);
        todo!()
    }
    /// Inbound lookup: packet arrived on `ifindex` for `dst`.
    pub fn inbound(&self, ifindex: u32, protocol: Protocol, dst: SocketAddr) -> Option<&Entry> {
        let _ = (ifindex, protocol, dst);
        todo!()
    }
    /// Reply lookup: packet leaves through `ifindex` from `src`.
    pub fn reply(&self, ifindex: u32, protocol: Protocol, src: SocketAddr) -> Option<&Entry> {
        let _ = (ifindex, protocol, src);
        todo!()
    }
    /// Ids of services that could not be resolved (interface absent or without address).
    pub fn waiting(&self) -> &[usize] {
        todo!()
    }
    pub fn entries(&self) -> &[Entry] {
        todo!()
    }
}
