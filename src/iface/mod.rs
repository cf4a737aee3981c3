//! Interfaces for `*` services: a [`Snapshot`] of names, indexes, states and own addresses,
//! and a [`Watcher`] on rtnetlink that says when to take a new one.
//!
//! The daemon opens the watcher first, then reads the snapshot (so no change falls between
//! the two), polls the watcher's fd with its others, and on `drain() == Ok(true)` reads a new
//! snapshot, logs `old.diff(&new, names)` and rebuilds its table. Interfaces are followed by
//! name: a PPP reconnect creates a new ifindex under the same name.
//!
//! Everything here works in the calling thread's network namespace. Decoding lives in [`msg`],
//! pure and panic-free, so it can be tested and fuzzed without a kernel; framing and the
//! socket are [`crate::netlink`]'s.

pub mod msg;
mod name;
mod snapshot;
mod watch;

pub use name::name_of;
pub use snapshot::{Change, ChangeKind, Snapshot};
pub use watch::{Event, Watcher};
