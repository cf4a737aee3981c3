//! `netnat status --json` read with a real JSON parser (`serde_json`): the document as a
//! [`Value`], paths into it ([`Doc`]), a service found by its line, and waiting until netnat
//! has settled. The daemon writes the document by hand, so every test that reads it also
//! checks that it parses.
//!
//! It may use [`super::scenario::Netnat`] (which runs the command) and nothing of the daemon.

use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::Value;

use super::scenario::Netnat;

/// Reading a status document by path.
pub trait Doc {
    /// The value at `a.b.0.c` (object keys, array indices), if there is one.
    fn at(&self, path: &str) -> Option<&Value>;
    /// The integer at `path`; panics with the document when absent (the shape is fixed).
    fn n(&self, path: &str) -> u64;
}

impl Doc for Value {
    fn at(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self, |v, k| match v {
            Value::Array(a) => a.get(k.parse::<usize>().ok()?),
            _ => v.get(k),
        })
    }

    fn n(&self, path: &str) -> u64 {
        self.at(path)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no number at {path} in {self}"))
    }
}

/// Parses a `status --json` document; panics with the text when it is not JSON.
pub fn parse(text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{text}"))
}

/// The service objects of the document (none when it has no `services` array).
pub fn services(st: &Value) -> &[Value] {
    st.get("services")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The service object whose line is `line`, if there is one.
pub fn service_exact<'a>(st: &'a Value, line: &str) -> Option<&'a Value> {
    services(st)
        .iter()
        .find(|s| s.get("service").and_then(Value::as_str) == Some(line))
}

/// The service object whose line starts with `prefix` (e.g. `service pub0 port 10.99.1.80
/// 7001 `); panics with the document when there is none.
pub fn service<'a>(st: &'a Value, prefix: &str) -> &'a Value {
    services(st)
        .iter()
        .find(|s| {
            s.get("service")
                .and_then(Value::as_str)
                .is_some_and(|l| l.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no service {prefix:?} in status {st}"))
}

/// How long the counters must stand still with offload on: the kernel's counts reach
/// `status` about every 2 s.
pub const OFFLOAD_QUIET: Duration = Duration::from_millis(2500);

/// Whether the document says offload is on (`offload.enabled`; absent before offload existed).
pub fn offload_enabled(st: &Value) -> bool {
    st.at("offload.enabled").and_then(Value::as_bool) == Some(true)
}

/// What must stand still for [`settle`]: netnat's own count, and with offload the kernel's and
/// every service's packet counters (which take in the kernel's).
fn settle_key(st: &Value) -> Vec<u64> {
    let mut k = vec![st.n("queue.received")];
    if offload_enabled(st) {
        k.push(st.n("offload.packets"));
        for s in services(st) {
            k.push(s.n("in_packets"));
            k.push(s.n("out_packets"));
        }
    }
    k
}

/// Waits until netnat has given a verdict for every packet it received and nothing new came
/// for `quiet`, i.e. the kernel-side reactions (ICMP errors, RSTs) have passed through too.
/// With offload on, also until the kernel's counts came in: nothing moved for at least
/// [`OFFLOAD_QUIET`]. Returns the last status. Bounded by `timeout` (plus that quiet time).
pub fn settle(n: &Netnat, quiet: Duration, timeout: Duration) -> Value {
    let start = Instant::now();
    let mut last = n.status_json();
    let (quiet, timeout) = if offload_enabled(&last) {
        (quiet.max(OFFLOAD_QUIET), timeout + OFFLOAD_QUIET)
    } else {
        (quiet, timeout)
    };
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = n.status_json();
        let same = settle_key(&now) == settle_key(&last);
        let balanced = now.n("queue.received") == now.n("queue.verdicts");
        if !same || !balanced {
            since = Instant::now();
        }
        last = now;
        if balanced && since.elapsed() >= quiet {
            return last;
        }
        assert!(
            start.elapsed() < timeout,
            "netnat did not settle within {timeout:?}: {last}\n{}",
            n.proc.evidence()
        );
    }
}
