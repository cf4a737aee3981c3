//! Per-packet cost of `wire::rewrite` on TCP/IPv4, with a complete checksum (incremental
//! update) and a not-ready one (full computation), for a 64-byte and a 1500-byte packet.
//!
//! `cargo bench --bench rewrite`. Plain std: each figure is the median over several runs of
//! many iterations on one buffer; this machine is shared, so compare the rows of one run.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use netnat::wire::{ChecksumState, Direction, Outcome, rewrite};

/// Ones-complement checksum, written out here so that the benchmark builds valid packets
/// without depending on the code it measures.
fn csum(parts: &[&[u8]]) -> u16 {
    let mut s: u32 = 0;
    for p in parts {
        for w in p.chunks(2) {
            s += u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
        }
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    !(s as u16)
}

/// A TCP/IPv4 packet of `total` bytes, 10.99.1.2:40000 -> 10.99.1.1:80, checksums correct.
fn tcp_v4(total: usize) -> Vec<u8> {
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 99, 1, 2]);
    p[16..20].copy_from_slice(&[10, 99, 1, 1]);
    let c = csum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10;
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = (i * 31 + 7) as u8;
    }
    let len = ((total - 20) as u16).to_be_bytes();
    let pseudo = [10, 99, 1, 2, 10, 99, 1, 1, 0, 6, len[0], len[1]];
    let c = csum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// Median nanoseconds per packet over `runs` runs of `iters` rewrites.
fn measure(size: usize, state: ChecksumState, iters: u32, runs: usize) -> f64 {
    let mut pkt = tcp_v4(size);
    let actual: SocketAddr = "192.168.77.10:8080".parse().unwrap();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        for _ in 0..iters {
            // After the first pass the destination already is `actual`; the work is the same.
            let out = rewrite(
                black_box(&mut pkt[..]),
                Direction::Inbound,
                state,
                |_, _| Some((black_box(actual), ())),
            );
            if !matches!(out, Outcome::Rewritten { .. }) {
                panic!("benchmark packet not rewritten: {out:?}");
            }
            black_box(&out);
        }
        samples.push(start.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` from other tooling is ignored.
    println!("wire::rewrite, TCP/IPv4 inbound, median of 11 runs");
    for (size, state, iters) in [
        (64, ChecksumState::Complete, 2_000_000),
        (1500, ChecksumState::Complete, 2_000_000),
        (64, ChecksumState::NotReady, 2_000_000),
        (1500, ChecksumState::NotReady, 300_000),
    ] {
        let ns = measure(size, state, iters, 11);
        let how = match state {
            ChecksumState::Complete => "complete (incremental)",
            ChecksumState::NotReady => "not ready (full)",
        };
        println!("{size:>5} bytes  {how:<24} {ns:>8.1} ns/packet");
    }
}
