//! Configuration text all the way to the bytes netnat would send to the kernel: parse, the
//! services, the policy with its queue range, the rules as `netnat rules` prints them, and the
//! netlink install batch in both queue forms (native `queue` and the xtables-compat target).
//! What `check`, `rules` and `run` do with a file, minus the kernel. Nothing may panic (the
//! `queue 0` overflow lived on this path), and what is known must hold:
//! - every service prints back to itself (the canonical form parses to the same service);
//! - the queue range is 1 or more queues, all numbered 0-65535, and `rules` says so;
//! - the batch is well-formed netlink: BATCH_BEGIN, nftables messages whose lengths and
//!   attributes add up exactly, BATCH_END; one NEWRULE per rule of the policy (the rewrite
//!   chains of `header-only on` included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netnat::config::{self, Config};
use netnat::nft::{self, Policy, QueueExprKind};

const NLMSG_HDRLEN: usize = 16;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = config::parse_config(text, "fuzz") else {
        return;
    };
    for line in &config.services {
        let canonical = line.service.to_string();
        assert_eq!(
            config::parse_service(&canonical).as_ref(),
            Ok(&line.service),
            "{canonical:?}"
        );
    }
    let policy = policy_of(&config);
    let q = policy.queue_spec();
    let last = u32::from(q.num) + u32::from(q.total) - 1;
    assert!(q.total >= 1, "{q:?}");
    assert!(last <= u32::from(u16::MAX), "{q:?}");

    let rendered = nft::render(&policy);
    assert!(rendered.starts_with("table inet netnat {\n"), "{rendered}");
    assert!(rendered.ends_with("}\n"), "{rendered}");
    // netnat's table and the leak guard go in the same batch.
    let chains: Vec<&nft::ChainSpec> = policy
        .chains()
        .into_iter()
        .chain(policy.guard.chains())
        .collect();
    // With `header-only on`, the rewrite chains: each direction's rules and one final drop.
    let rewrite_rules = policy.rewrite.as_ref().map_or(0, |rw| {
        rw.rules(true).len() + rw.rules(false).len() + 2
    });
    // With `offload on`, its rules first in the queueing chains and the rewrite chains.
    let offload_rules = policy.offload.as_ref().map_or(0, |off| {
        [true, false]
            .into_iter()
            .map(|inbound| {
                nft::offload::queue_rules_text(off, inbound).len()
                    + nft::offload::rewrite_rules_text(off, inbound).len()
            })
            .sum::<usize>()
            + nft::offload::reply_rules_text(off).len()
    });
    let rules: usize = chains.iter().map(|c| c.rules.len()).sum::<usize>()
        + rewrite_rules
        + offload_rules;
    let queue_words = if q.total > 1 {
        format!("queue num {}-{last} ", q.num)
    } else {
        format!("queue num {}", q.num)
    };
    let queues = chains
        .iter()
        .any(|c| c.rules.iter().any(|r| r.verdict == nft::Verdict::Queue));
    assert_eq!(
        rendered.contains(&queue_words),
        queues,
        "{queue_words:?} in {rendered}"
    );

    for kind in [QueueExprKind::Native, QueueExprKind::Compat] {
        let bytes = nft::install_batch_bytes(&policy, kind);
        let new_rules = check_batch(&bytes);
        assert_eq!(new_rules, rules, "{kind:?}");
    }
});

/// The policy exactly as `netnat rules` and `netnat run` build it.
fn policy_of(config: &Config) -> Policy {
    netnat::daemon::policy_of(config, config.settings.queue_count())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Walks the batch message by message; returns the number of NEWRULE messages.
fn check_batch(bytes: &[u8]) -> usize {
    let mut at = 0;
    let mut types = Vec::new();
    let mut new_rules = 0;
    while at < bytes.len() {
        assert!(bytes.len() - at >= NLMSG_HDRLEN, "short header at {at}");
        let len = u32_at(bytes, at) as usize;
        let ty = u16_at(bytes, at + 4);
        assert!(len >= NLMSG_HDRLEN + 4, "message at {at}: length {len}");
        assert!(
            at + len <= bytes.len(),
            "message at {at} overruns the batch"
        );
        if ty != NFNL_MSG_BATCH_BEGIN && ty != NFNL_MSG_BATCH_END {
            assert_eq!(
                ty >> 8,
                NFNL_SUBSYS_NFTABLES,
                "message at {at}: type {ty:#x}"
            );
            if ty & 0xff == NFT_MSG_NEWRULE {
                new_rules += 1;
            }
            check_attrs(&bytes[at + NLMSG_HDRLEN + 4..at + len], at);
        }
        types.push(ty);
        at += align4(len);
    }
    assert_eq!(at, bytes.len(), "padding past the last message");
    assert_eq!(types.first(), Some(&NFNL_MSG_BATCH_BEGIN));
    assert_eq!(types.last(), Some(&NFNL_MSG_BATCH_END));
    let inner = &types[1..types.len() - 1];
    assert!(
        !inner.contains(&NFNL_MSG_BATCH_BEGIN) && !inner.contains(&NFNL_MSG_BATCH_END),
        "{types:?}"
    );
    new_rules
}

/// The attributes after the nfgenmsg header tile the message exactly (nested ones are the
/// kernel's to judge; their outer lengths are checked here).
fn check_attrs(mut attrs: &[u8], msg_at: usize) {
    while !attrs.is_empty() {
        assert!(
            attrs.len() >= 4,
            "message at {msg_at}: attribute header cut"
        );
        let len = usize::from(u16_at(attrs, 0));
        assert!(
            len >= 4 && len <= attrs.len(),
            "message at {msg_at}: attribute length {len} of {}",
            attrs.len()
        );
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
}
