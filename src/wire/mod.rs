//! The rewrite core: pure, panic-free functions over a packet buffer as NFQUEUE delivers it
//! (an IPv4 or IPv6 packet starting at the IP header). No kernel needed.
//!
//! API CONTRACT (other modules are written against it):
//! - [`rewrite`] translates one packet in place and returns an [`Outcome`].
//! - The caller supplies `lookup`, which is asked about exactly one endpoint: for
//!   `Direction::Inbound` the destination of a plain packet (or the *source* of the packet quoted
//!   in an ICMP error); for `Direction::Reply` the source of a plain packet (or the *destination*
//!   of the quoted packet). It returns the endpoint to write instead plus a caller token `T`.
//!
//! What is translated, and how:
//! - TCP and UDP over IPv4 (options allowed) and IPv6 (hop-by-hop, routing without segments
//!   left, destination options, fragment and AH headers walked): address and port, the IPv4
//!   header checksum, and the transport checksum: RFC 1624 update for `Complete`, full
//!   computation over pseudo-header and segment for `NotReady`. IPv4 UDP without checksum
//!   keeps none; a UDP checksum computing to 0 is written 0xFFFF.
//! - A first fragment is translated with `Complete` only (its checksum covers data it does
//!   not hold); later fragments carry no ports and are `Malformed::Fragment`.
//! - ICMP errors (v4: 3, 11, 12; v6: 1 to 4) quoting TCP/UDP: the quoted endpoint, the quoted
//!   IPv4 header checksum, the quoted transport checksum when the quote holds it, the outer
//!   address only when it is the translated endpoint's own address (a router's error keeps
//!   the router's), the outer IPv4 header checksum and the ICMP checksum (for ICMPv6 with
//!   its pseudo-header).
//! - The IP header's length is the packet's; bytes past it in the buffer are left alone.
//!
//! Layout: [`checksum`] (RFC 1071 sums, RFC 1624 incremental updates, pseudo-headers),
//! [`header`] (the named header fields), [`field`] (checked byte access), [`ip`] (the one IP
//! parser: IPv4/IPv6 header validation into offsets, IPv6 extension-header walk, also used by
//! the engine's lenient looks at packets), `addr` (addresses by value, endpoints,
//! pseudo-headers), `manip` (the per-protocol header manipulations: IP address, TCP, UDP),
//! `rewrite` (TCP/UDP packets) and `icmp` (ICMP/ICMPv6 errors and the packets they quote).
//! `rewrite` and `icmp` decide; only `manip` writes headers.

use std::net::SocketAddr;

use crate::config::Protocol;

mod addr;
pub mod checksum;
pub mod field;
pub mod header;
mod icmp;
pub mod ip;
mod manip;
mod rewrite;

/// Which way a packet crosses the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Public side → actual server: destination apparent → actual.
    Inbound,
    /// Actual server → public side: source actual → apparent.
    Reply,
}

/// State of the packet's L4 checksum as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumState {
    /// The checksum field holds a complete checksum: incremental update (RFC 1624).
    Complete,
    /// NFQA_SKB_CSUMNOTREADY: the field holds only the pseudo-header seed; compute in full.
    NotReady,
}

/// The addresses of a flow, as they were before the rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// What kind of packet was rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TCP or UDP packet of the flow. `syn` is true for a TCP SYN without ACK.
    Plain { syn: bool },
    /// An ICMP/ICMPv6 error quoting a packet of the flow.
    IcmpError,
}

/// Why a packet could not be parsed or translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    Truncated,
    BadVersion,
    BadHeaderLength,
    BadTotalLength,
    /// Fragment without the transport header (ports unknown), or a first fragment whose
    /// checksum is `NotReady` (completing it would need the whole datagram).
    Fragment,
    /// IPv6 extension header chain that cannot be walked.
    BadExtensionHeader,
    UnsupportedProtocol,
    /// IPv6 routing header with segments left: the checksums use the final destination from
    /// the routing header, so rewriting the header's destination field would be wrong.
    SourceRouted,
    /// `lookup` returned an endpoint of the other address family than the packet's.
    AddressFamily,
}

/// Result of [`rewrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Translated in place; `flow` is the (outer or quoted) flow before translation.
    Rewritten { token: T, flow: Flow, kind: Kind },
    /// Parsed fine but `lookup` declined (or an ICMP message that is not an error we translate).
    /// Every ICMP/ICMPv6 message that is not translated reports `Kind::IcmpError`, also
    /// non-error messages such as echo requests, which are never looked up.
    NotOurs { kind: Kind },
    /// Could not be parsed; the buffer is unchanged.
    Malformed(Malformed),
}

/// Translates `pkt` in place. Never panics; on anything but `Rewritten` the buffer is unchanged.
pub fn rewrite<T>(
    pkt: &mut [u8],
    dir: Direction,
    csum: ChecksumState,
    lookup: impl FnOnce(Protocol, SocketAddr) -> Option<(SocketAddr, T)>,
) -> Outcome<T> {
    rewrite::translate(pkt, dir, csum, lookup)
}

#[cfg(test)]
mod tests;
