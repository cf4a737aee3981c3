//! netnat: a Linux port-service proxy.
//!
//! The shape of the crate follows the data path: packets enter at [`queue`], are judged in
//! [`engine`] (the service table and one packet's decision), changed by [`wire`] and leave as a
//! verdict. [`nft`] and [`iface`] only change which packets reach the queue and what `*`
//! means; [`daemon`] starts everything and applies changes, [`control`] is how the
//! administrator talks to it. [`config`], [`wire`], `engine::service` and `engine::datapath`
//! are pure and need no kernel.

pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod iface;
pub mod log;
pub mod netlink;
pub mod nft;
pub mod queue;
pub mod wire;
