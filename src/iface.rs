//! The interfaces as the system has them now: name → ifindex and the primary address of each
//! family, for `*` services. A snapshot; the daemon takes a new one when addresses change.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::service::Interfaces;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Iface {
    index: u32,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

/// A snapshot of the system's interfaces (the current network namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    by_name: HashMap<String, Iface>,
}

impl Snapshot {
    /// Reads every interface and its addresses with getifaddrs(3).
    pub fn read() -> io::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs writes a list head we own and free below with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned and is not freed yet.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null() {
                continue;
            }
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            let entry = snap.by_name.entry(name.clone()).or_default();
            if entry.index == 0 {
                entry.index = index_of(&name).unwrap_or(0);
            }
            // SAFETY: ifa_addr is null or points to a sockaddr whose family says its real type.
            match unsafe { sockaddr_ip(ifa.ifa_addr) } {
                Some(IpAddr::V4(a)) if entry.v4.is_none() => entry.v4 = Some(a),
                // Link-local addresses are not an interface's "natural" public address.
                Some(IpAddr::V6(a)) if entry.v6.is_none() && !is_link_local(&a) => {
                    entry.v6 = Some(a)
                }
                _ => {}
            }
        }
        // SAFETY: `head` came from getifaddrs and no reference into the list outlives this call.
        unsafe { libc::freeifaddrs(head) };
        Ok(snap)
    }

    /// Names of all interfaces in the snapshot.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
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
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

fn index_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// # Safety
/// `sa` must be null or point to a valid sockaddr of the family it declares.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `sa` is valid; the family field is common to all sockaddrs,
    // and we only reinterpret it as the type the family names.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_read_with_its_address() {
        let snap = Snapshot::read().expect("getifaddrs");
        assert!(snap.index("lo").is_some(), "lo has an index: {snap:?}");
        assert_eq!(
            snap.address("lo", false),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(snap.index("no-such-if0"), None);
    }
}
