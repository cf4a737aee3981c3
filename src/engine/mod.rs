//! The per-packet engine: what happens to one queued packet, from lookup to verdict to record.
//!
//! - [`service`]: the service table (which apparent endpoint maps to which actual server),
//!   pure, built whole and swapped whole;
//! - [`datapath`]: one packet's decision (lookup, rewrite through [`crate::wire`], verdict),
//!   pure;
//! - [`stats`] and [`record`]: counters and the records the flags ask for, pure;
//! - [`flows`]: the lock-free slot table both flow memories keep their flows in (the `*`
//!   memory of [`service`], the UDP new-flow memory of [`record`]), shared by the queue threads;
//! - [`monitor`]: counts each decision and writes its records, one per queue thread;
//! - [`consumer`]: the queue threads that receive, decide and answer (the one part that talks
//!   to the kernel, through [`crate::queue`]), and the main thread's side of what they share:
//!   generations published by atomic swap, per-thread counter shards summed by the reader.
//!
//! May use: `config`, `wire`, `queue`, `log`. Used by: `daemon`, `control` (to report).

pub mod consumer;
pub mod datapath;
pub mod flows;
pub mod monitor;
pub mod record;
pub mod service;
pub mod stats;
