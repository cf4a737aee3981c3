//! netnat: a Linux port-service proxy.
//!
//! The shape of the crate follows the data path: packets enter at [`queue`], are judged by
//! [`service`] in [`datapath`], changed by [`wire`] and leave as a verdict. [`nft`] and
//! [`iface`] only change which packets reach the queue and what `*` means. [`config`],
//! [`service`], [`wire`] and [`datapath`] are pure and need no kernel.

pub mod config;
pub mod consumer;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod iface;
pub mod log;
pub mod metrics;
pub mod metrics_http;
pub mod monitor;
pub mod nft;
pub mod prereq;
pub mod queue;
pub mod record;
pub mod save;
pub mod service;
pub mod stats;
pub mod status;
pub mod top;
pub mod wire;
