//! netnat: a Linux port-service proxy.
//!
//! The shape of the crate follows the data path: packets enter at [`queue`], are judged by
//! [`service`], changed by [`wire`] and leave as a verdict. [`nft`] only changes which packets
//! reach the queue. [`config`], [`service`] and [`wire`] are pure and need no kernel.

pub mod config;
pub mod nft;
pub mod queue;
pub mod service;
pub mod wire;
