//! The address family of a rule and the ICMP flavour that goes with it.
//!
//! Pure; uses no other module.

use std::net::IpAddr;

/// ICMPv4 error types whose quoted packet netnat translates: destination unreachable, time
/// exceeded, parameter problem.
pub const ICMP_ERROR_TYPES: [u8; 3] = [3, 11, 12];

/// ICMPv6 error types: destination unreachable, packet too big, time exceeded, parameter problem.
pub const ICMPV6_ERROR_TYPES: [u8; 4] = [1, 2, 3, 4];

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Address family of a rule (`meta nfproto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// `NFPROTO_IPV4` / `NFPROTO_IPV6`, the value `meta nfproto` loads.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ipv4 => libc::NFPROTO_IPV4 as u8,
            Family::Ipv6 => libc::NFPROTO_IPV6 as u8,
        }
    }

    /// The ICMP flavour of this family: protocol number and the error types netnat handles.
    pub fn icmp(self) -> (u8, &'static [u8]) {
        match self {
            Family::Ipv4 => (IPPROTO_ICMP, &ICMP_ERROR_TYPES),
            Family::Ipv6 => (IPPROTO_ICMPV6, &ICMPV6_ERROR_TYPES),
        }
    }

    /// Length of an address of this family in bytes.
    pub fn addr_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }
}
