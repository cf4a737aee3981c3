//! Any bytes as a queued packet, in both directions and both checksum states, with a lookup
//! that accepts every endpoint. Checks the contract beyond "no panic": at most one lookup,
//! the buffer untouched unless rewritten, and a rewritten packet's length unchanged.
#![no_main]

use std::cell::Cell;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use netnat::wire::{ChecksumState, Direction, Outcome, rewrite};

fuzz_target!(|data: &[u8]| {
    for dir in [Direction::Inbound, Direction::Reply] {
        for csum in [ChecksumState::Complete, ChecksumState::NotReady] {
            let mut buf = data.to_vec();
            let calls = Cell::new(0u32);
            let out = rewrite(&mut buf, dir, csum, |_, a: SocketAddr| {
                calls.set(calls.get() + 1);
                // Same family, another port and address: every byte of the endpoint changes
                // for most inputs.
                let ip = match a.ip() {
                    std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((!u32::from(v4)).into()),
                    std::net::IpAddr::V6(v6) => std::net::IpAddr::V6((!u128::from(v6)).into()),
                };
                Some((SocketAddr::new(ip, !a.port()), ()))
            });
            assert!(calls.get() <= 1, "lookup called {} times", calls.get());
            assert_eq!(buf.len(), data.len());
            if !matches!(out, Outcome::Rewritten { .. }) {
                assert!(buf == data, "buffer changed without a rewrite: {out:?}");
            }
        }
    }
});
