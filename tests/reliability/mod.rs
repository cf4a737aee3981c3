//! Helpers shared by the reliability tests (tests/reliability_*.rs): netnat's status as a
//! parsed document, captures with a BPF filter, the kernel's queue table, small waits.
//!
//! Kept apart from tests/common so that the shared harness stays as it is; everything here is
//! built on it and, like it, bounded in time.

#![allow(dead_code)] // each test crate uses a different part

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::scenario::{Netnat, netnat_bin};
use crate::common::{CmdOutput, Ns, Proc, Topology, run_bounded};

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader for `netnat status --json` (the crate has no JSON dependency, and the
// document is small and machine-written).

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    pub fn parse(s: &str) -> Result<Json, String> {
        let b = s.as_bytes();
        let mut i = 0;
        let v = value(b, &mut i)?;
        ws(b, &mut i);
        if i != b.len() {
            return Err(format!("trailing bytes at {i}"));
        }
        Ok(v)
    }

    /// `a.b.c` path through objects.
    pub fn at(&self, path: &str) -> Option<&Json> {
        let mut v = self;
        for k in path.split('.') {
            match v {
                Json::Obj(m) => v = m.get(k)?,
                _ => return None,
            }
        }
        Some(v)
    }

    /// The integer at `path`; panics with the document when absent (the shape is fixed).
    pub fn n(&self, path: &str) -> u64 {
        match self.at(path) {
            Some(Json::Num(x)) => *x as u64,
            _ => panic!("no number at {path} in {self:?}"),
        }
    }

    pub fn as_arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

fn ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn value(b: &[u8], i: &mut usize) -> Result<Json, String> {
    ws(b, i);
    match b.get(*i) {
        Some(b'{') => {
            *i += 1;
            let mut m = BTreeMap::new();
            ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Ok(Json::Obj(m));
            }
            loop {
                ws(b, i);
                let Json::Str(k) = value(b, i)? else {
                    return Err(format!("object key expected at {i}"));
                };
                ws(b, i);
                if b.get(*i) != Some(&b':') {
                    return Err(format!("':' expected at {i}"));
                }
                *i += 1;
                let v = value(b, i)?;
                m.insert(k, v);
                ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return Ok(Json::Obj(m));
                    }
                    _ => return Err(format!("',' or '}}' expected at {i}")),
                }
            }
        }
        Some(b'[') => {
            *i += 1;
            let mut a = Vec::new();
            ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Ok(Json::Arr(a));
            }
            loop {
                a.push(value(b, i)?);
                ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return Ok(Json::Arr(a));
                    }
                    _ => return Err(format!("',' or ']' expected at {i}")),
                }
            }
        }
        Some(b'"') => {
            *i += 1;
            let mut s = String::new();
            while let Some(&c) = b.get(*i) {
                *i += 1;
                match c {
                    b'"' => return Ok(Json::Str(s)),
                    b'\\' => {
                        let e = *b.get(*i).ok_or("bad escape")?;
                        *i += 1;
                        match e {
                            b'n' => s.push('\n'),
                            b't' => s.push('\t'),
                            b'u' => {
                                let hex = std::str::from_utf8(b.get(*i..*i + 4).ok_or("bad \\u")?)
                                    .map_err(|e| e.to_string())?;
                                let cp = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                s.push(char::from_u32(cp).unwrap_or('?'));
                                *i += 4;
                            }
                            other => s.push(char::from(other)),
                        }
                    }
                    _ => {
                        // Multi-byte UTF-8 passes through byte by byte into a lossy string.
                        s.push(char::from(c));
                    }
                }
            }
            Err("unterminated string".into())
        }
        Some(b't') if b[*i..].starts_with(b"true") => {
            *i += 4;
            Ok(Json::Bool(true))
        }
        Some(b'f') if b[*i..].starts_with(b"false") => {
            *i += 5;
            Ok(Json::Bool(false))
        }
        Some(b'n') if b[*i..].starts_with(b"null") => {
            *i += 4;
            Ok(Json::Null)
        }
        Some(_) => {
            let start = *i;
            while *i < b.len() && (b[*i].is_ascii_digit() || b"+-.eE".contains(&b[*i])) {
                *i += 1;
            }
            std::str::from_utf8(&b[start..*i])
                .ok()
                .and_then(|t| t.parse().ok())
                .map(Json::Num)
                .ok_or_else(|| format!("bad value at {start}"))
        }
        None => Err("unexpected end".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// netnat's status

/// The control socket `Netnat::start` gives a netnat started with `label`.
pub fn control_path(t: &Topology, label: &str) -> PathBuf {
    t.dir.file(&format!("{label}.sock"))
}

/// `netnat status --json` of the netnat started with `label`, parsed.
pub fn status(t: &Topology, label: &str, n: &Netnat) -> Json {
    let mut c = Command::new(netnat_bin());
    c.args(["status", "--json", "--control"])
        .arg(control_path(t, label));
    let out = run_bounded(c, Duration::from_secs(20));
    assert!(
        out.success(),
        "netnat status --json failed\n{out}\n{}",
        n.proc.evidence()
    );
    Json::parse(out.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", out.stdout))
}

/// The service object whose line starts with `prefix` (e.g. `service pub0 port 10.99.1.80 7001 `).
pub fn service<'a>(st: &'a Json, prefix: &str) -> &'a Json {
    st.at("services")
        .map(Json::as_arr)
        .unwrap_or_default()
        .iter()
        .find(|s| {
            s.at("service")
                .and_then(Json::as_str)
                .is_some_and(|l| l.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no service {prefix:?} in status {st:?}"))
}

/// Waits until netnat has given a verdict for every packet it received and nothing new came
/// for `quiet`, i.e. the kernel-side reactions (ICMP errors, RSTs) have passed through too.
/// Returns the last status. Bounded by `timeout`.
pub fn settle(t: &Topology, label: &str, n: &Netnat, quiet: Duration, timeout: Duration) -> Json {
    let start = Instant::now();
    let mut last = status(t, label, n);
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = status(t, label, n);
        let same = now.n("queue.received") == last.n("queue.received");
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
            "netnat did not settle within {timeout:?}: {last:?}\n{}",
            n.proc.evidence()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Captures with a BPF filter (small pcaps beside bulk traffic)

pub struct FilteredCapture {
    proc: Proc,
    pub path: PathBuf,
}

impl FilteredCapture {
    pub fn start(t: &Topology, ns: &Ns, dev: &str, name: &str, filter: &str) -> FilteredCapture {
        let path = t.dir.file(&format!("{name}.pcap"));
        let p = path.to_str().expect("utf-8").to_string();
        let mut argv = vec![
            "tcpdump", "-i", dev, "-n", "-U", "-B", "8192", "-Z", "root", "-w", &p,
        ];
        argv.extend(filter.split_whitespace());
        let mut proc = t.spawn(ns, &format!("tcpdump-{name}"), &argv);
        if let Err(e) = proc.wait_stderr("listening on", Duration::from_secs(10)) {
            panic!("tcpdump {name} did not start: {e}");
        }
        FilteredCapture { proc, path }
    }

    /// Stops tcpdump and checks the kernel dropped nothing of what the filter selected.
    pub fn stop(mut self) -> PathBuf {
        // The last TPACKET block is retired within 1 s; see tests/common/capture.rs.
        thread::sleep(Duration::from_millis(1500));
        self.proc.signal(libc::SIGINT);
        assert!(
            self.proc.wait_timeout(Duration::from_secs(10)).is_some(),
            "tcpdump did not stop\n{}",
            self.proc.evidence()
        );
        let err = self.proc.stderr();
        let dropped = err
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        assert_eq!(dropped, Some(0), "tcpdump lost packets:\n{err}");
        self.path.clone()
    }
}

/// Values of tshark fields for the packets matching `filter`, one Vec per packet.
pub fn fields(pcap: &std::path::Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-Y", filter, "-T", "fields", "-E", "separator=/t"];
    for f in fields {
        args.push("-e");
        args.push(f);
    }
    let out = crate::common::capture::tshark(pcap, &args);
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Evidence for failure messages: a command's output in short.
pub fn brief(out: &CmdOutput) -> String {
    format!("{out}")
}
