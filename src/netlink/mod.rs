//! Netlink, once for all of netnat: the framing of messages and attributes ([`frame`]), the
//! kernel's acknowledgements and refusals with their extended-ACK text ([`ack`]), and the
//! socket ([`Socket`]). The three users speak their own protocols on top: [`crate::queue`]
//! (nfnetlink_queue), [`crate::iface`] (rtnetlink) and [`crate::nft`] (nf_tables).
//!
//! What comes from crates, and why the rest is netnat's own:
//! - `nftnl` (libnftnl) builds the nftables objects where its types serve: chains, rules and
//!   their expressions, sets, and the batch that frames them. `crate::nft` adds raw libnftnl
//!   objects where the crate falls short (a table with the owner flag, a flush of every rule)
//!   and encodes set elements itself (libnftnl's per-element objects would take several MiB
//!   for 10,000 services).
//! - The `mnl` crate (libmnl) is no dependency any more: netnat's sockets are its own because
//!   `mnl_socket_open` cannot set close-on-exec at creation (see [`socket`]), and what else mnl
//!   gives (framing, callback runners) is the few lines of [`frame`] and [`ack`]. libmnl is
//!   still linked, under libnftnl (`nftnl-sys` needs `mnl-sys`).
//! - Everything else here is a few dozen lines of byte handling that must be panic-free on
//!   any input (it is fuzzed), and that no crate gives with ranges into the caller's buffer.
//!
//! May use: `libc` and the standard library. Nothing here knows a protocol's message types
//! beyond netlink's own (`NLMSG_*`).

pub mod ack;
pub mod frame;
pub mod socket;

pub use ack::ErrorMsg;
pub use frame::{Attr, FrameError, Header};
pub use socket::{Buffer, Received, Socket};
