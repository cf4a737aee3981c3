//! `netnat status`: a snapshot of the daemon's counters, as text for people and as JSON for
//! programs (and as Prometheus metrics, [`crate::control::metrics`], from the same [`Report`]). Built by
//! the daemon's main thread from the queue threads' live counters, summed without stopping
//! them; formatted here, never on the packet path.
//!
//! The JSON document (one object, keys always present, numbers are integers):
//!
//! ```text
//! {"format": 1,
//!  "queue": {"num": 4747, "count": 2, "expression": "native", "received": 0,
//!            "verdicts": 0, "enobufs": 0, "async_errors": 0, "failed_closed": 0,
//!            "send_failed_dropped": 0, "verdicts_lost": 0, "header_only": 0},
//!  "uptime_secs": 12, "passed": 0, "log_lost": 0, "start_unix": 1764658800,
//!  "reloads_ok": 0, "reloads_refused": 0,
//!  "unattributed_drops": {"oversize": 0, "malformed": 0, "unmapped_reply": 0},
//!  "services": [{"service": "service pub0 port * 80 TCP 192.168.77.10 8080 0x8000",
//!                "iface": "pub0", "protocol": "TCP",
//!                "apparent_addr": "*", "apparent_port": 80,
//!                "actual_addr": "192.168.77.10", "actual_port": 8080, "flags": 32768,
//!                "state": "active", "apparent": "10.99.1.1:80",
//!                "in_packets": 0, "in_bytes": 0, "out_packets": 0, "out_bytes": 0,
//!                "new_connections": 0, "icmp_errors": 0,
//!                "drops": {"oversize": 0, "malformed": 0, "unmapped_reply": 0},
//!                "last_seen": null}],
//!  "flows_refused": {"star": 0, "udp": 0},
//!  "offload": {"enabled": false, "flows": 0, "flows_limit": 0, "packets": 0, "bytes": 0}}
//! ```
//!
//! `format` is the version of this layout: it grows when a key changes meaning or goes away,
//! not when keys are added. Per service, `service` is the canonical line and the keys after it
//! are its fields as configured (`apparent_addr` is `*` or an address, `flags` the bitmask as
//! a number); `apparent` is the endpoint `*` resolves to now.
//!
//! `state` is `active` (in the lookup table), `waiting` (its interface is absent or has no
//! address of the family yet; `apparent` is null) or `conflict` (a `*` service whose address
//! turned out to equal another service's endpoint; left out). `last_seen` is Unix seconds or
//! null. `expression` is how the rules reach the queue: `native` (nft `queue`) or `compat`
//! (the xtables NFQUEUE target). The rules use queues `num` to `num + count - 1`, one
//! consumer thread each; the counters are their sums. `failed_closed`: packets netnat had
//! rewritten whose payload could not be returned, dropped; `send_failed_dropped`: packets whose
//! verdict could not be sent, dropped by a second, small verdict; `verdicts_lost`: packets whose
//! verdict could not be sent at all (held by the kernel until the queue is unbound).
//! `start_unix`: when the daemon started, Unix seconds; `reloads_ok`/`reloads_refused`: reloads
//! (SIGHUP, `netnat reload`) applied and refused since then. `flows_refused`: flows the two
//! flow memories found no room for (`star`: a `*` flow whose address is not remembered, its
//! replies leave from the default address; `udp`: a UDP flow counted new at each packet).
//! `offload` (`offload on`): `flows` now in the kernel's flow sets (a connection's two
//! directions are two), `flows_limit` the bound of each set (`offload-flows`), `packets` and
//! `bytes` rewritten by the kernel without netnat's consumer since the start (they are in the
//! services' counters too); all 0 and `enabled` false with offload off.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::{self, AppAddr};
use crate::engine::flows::FlowsRefused;
use crate::engine::stats::{Counters, DROP_REASONS, DropReason, queue_fields};
use crate::queue::QueueStats;

/// Where a service stands in the lookup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Active {
        apparent: SocketAddr,
    },
    /// Removed from the configuration; its established TCP connections are still translated.
    Draining {
        apparent: SocketAddr,
    },
    Waiting,
    Conflict,
}

#[derive(Clone, Debug)]
pub struct ServiceReport {
    /// The canonical `service ...` line.
    pub line: String,
    pub iface: String,
    pub state: ServiceState,
    pub counters: Counters,
}

#[derive(Clone, Debug)]
pub struct Report {
    /// First queue number.
    pub queue: u16,
    /// Number of queues (one consumer thread each).
    pub queues: u16,
    /// "native" or "compat".
    pub expression: String,
    pub uptime_secs: u64,
    pub queue_stats: QueueStats,
    pub unattributed: [u64; DROP_REASONS],
    pub passed: u64,
    pub log_lost: u64,
    /// When the daemon started serving, Unix seconds (wall clock).
    pub start_unix: u64,
    /// Reloads (SIGHUP or `netnat reload`) applied, and refused (the old set kept running).
    pub reloads_ok: u64,
    pub reloads_refused: u64,
    pub services: Vec<ServiceReport>,
    pub flows_refused: FlowsRefused,
    /// Flow offload's figures (`offload on`), `None` when off.
    pub offload: Option<OffloadReport>,
}

/// What the kernel did for offloaded flows (see `nft::offload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadReport {
    /// Flows in the flow sets now (each direction of a connection is one).
    pub flows: u64,
    /// `offload-flows`: the bound of each of the four flow sets.
    pub flows_limit: u64,
    /// Packets and bytes the kernel rewrote without netnat's consumer, since the start; they
    /// are in the services' counters too.
    pub packets: u64,
    pub bytes: u64,
}

/// How `netnat status` prints the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    /// The Prometheus text exposition format ([`crate::control::metrics`]).
    Prometheus,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Text, Format::Json, Format::Prometheus];

    /// Its name on the command line and in the control request.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Prometheus => "prometheus",
        }
    }

    pub fn of(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl Report {
    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.text(),
            Format::Json => self.json(),
            Format::Prometheus => crate::control::metrics::render(self),
        }
    }

    /// The text `netnat status` prints.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let q = &self.queue_stats;
        let _ = writeln!(
            o,
            "netnat: {} services, {} ({} queue expression), up {}",
            self.services.len(),
            self.queue_range(),
            self.expression,
            duration(self.uptime_secs)
        );
        let _ = writeln!(
            o,
            "queue: {} received, {} verdicts, {} ENOBUFS, {} async errors",
            q.received, q.verdicts, q.enobufs, q.async_errors
        );
        let _ = writeln!(
            o,
            "fail closed: {} dropped (payload could not be returned), {} dropped after a failed \
             verdict send, {} verdicts lost",
            q.failed_closed, q.send_failed_dropped, q.verdicts_lost
        );
        let _ = writeln!(
            o,
            "not a service's: {} passed, drops {}",
            self.passed,
            drops_text(&self.unattributed)
        );
        if let Some(off) = &self.offload {
            let _ = writeln!(
                o,
                "offload: {} flows (at most {} per set), {} packets ({} bytes) rewritten by the \
                 kernel",
                off.flows, off.flows_limit, off.packets, off.bytes
            );
        }
        if self.log_lost > 0 {
            let _ = writeln!(
                o,
                "log lines lost (log queue full, or log socket full, stalled or gone): {}",
                self.log_lost
            );
        }
        for s in &self.services {
            let c = &s.counters;
            let _ = writeln!(o, "\n{}", s.line);
            let state = match s.state {
                ServiceState::Active { apparent } => format!("apparent {apparent}"),
                ServiceState::Draining { apparent } => {
                    format!("removed, draining: apparent {apparent}, established connections only")
                }
                ServiceState::Waiting => format!("waiting for {}'s address", s.iface),
                ServiceState::Conflict => {
                    "left out: its endpoint is taken by another service".to_string()
                }
            };
            let _ = writeln!(o, "  {state}");
            let _ = writeln!(
                o,
                "  in  {} packets {} bytes; out {} packets {} bytes",
                c.in_packets, c.in_bytes, c.out_packets, c.out_bytes
            );
            let last = match c.last_seen {
                0 => "never".to_string(),
                t => utc(t),
            };
            let _ = writeln!(
                o,
                "  {} new connections, {} ICMP errors, drops {}, last seen {last}",
                c.new_connections,
                c.icmp_errors,
                drops_text(&c.drops)
            );
        }
        o
    }

    /// "queue 4747", or "queues 4747-4748" when there are several.
    fn queue_range(&self) -> String {
        if self.queues <= 1 {
            format!("queue {}", self.queue)
        } else {
            let last = u32::from(self.queue) + u32::from(self.queues) - 1;
            format!("queues {}-{last}", self.queue)
        }
    }

    /// The version of the JSON layout, `"format"` in the document.
    pub const JSON_FORMAT: u32 = 1;

    /// The JSON `netnat status --json` prints (see the module comment).
    pub fn json(&self) -> String {
        let mut o = String::new();
        let _ = write!(
            o,
            "{{\"format\":{},\"queue\":{{\"num\":{},\"count\":{},\"expression\":{}",
            Self::JSON_FORMAT,
            self.queue,
            self.queues,
            json_str(&self.expression),
        );
        for (name, v) in queue_fields(&self.queue_stats) {
            let _ = write!(o, ",\"{name}\":{v}");
        }
        let _ = write!(
            o,
            "}},\"uptime_secs\":{},\"passed\":{},\"log_lost\":{},\"start_unix\":{},\
             \"reloads_ok\":{},\"reloads_refused\":{},\"unattributed_drops\":{},\"services\":[",
            self.uptime_secs,
            self.passed,
            self.log_lost,
            self.start_unix,
            self.reloads_ok,
            self.reloads_refused,
            drops_json(&self.unattributed)
        );
        for (i, s) in self.services.iter().enumerate() {
            let c = &s.counters;
            let (state, apparent) = match s.state {
                ServiceState::Active { apparent } => ("active", json_str(&apparent.to_string())),
                ServiceState::Draining { apparent } => {
                    ("draining", json_str(&apparent.to_string()))
                }
                ServiceState::Waiting => ("waiting", "null".to_string()),
                ServiceState::Conflict => ("conflict", "null".to_string()),
            };
            let last = match c.last_seen {
                0 => "null".to_string(),
                t => t.to_string(),
            };
            let _ = write!(
                o,
                "{}{{\"service\":{},\"iface\":{},{}\"state\":\"{state}\",\"apparent\":{apparent}",
                if i > 0 { "," } else { "" },
                json_str(&s.line),
                json_str(&s.iface),
                fields_json(&s.line),
            );
            for (name, v) in c.figures() {
                let _ = write!(o, ",\"{name}\":{v}");
            }
            let _ = write!(
                o,
                ",\"drops\":{},\"last_seen\":{last}}}",
                drops_json(&c.drops)
            );
        }
        let f = self.flows_refused;
        let off = self.offload.unwrap_or_default();
        let _ = writeln!(
            o,
            "],\"flows_refused\":{{\"star\":{},\"udp\":{}}},\"offload\":{{\"enabled\":{},\
             \"flows\":{},\"flows_limit\":{},\"packets\":{},\"bytes\":{}}}}}",
            f.star,
            f.udp,
            self.offload.is_some(),
            off.flows,
            off.flows_limit,
            off.packets,
            off.bytes
        );
        o
    }
}

/// The configured fields of a service, each followed by a comma. Read back from the canonical
/// line, which parses to the very service it was written from (`config::format`'s promise):
/// the report then needs nothing but the line.
fn fields_json(line: &str) -> String {
    let Ok(s) = config::parse_service(line) else {
        // Cannot happen for a canonical line; the document keeps its keys all the same.
        return "\"protocol\":null,\"apparent_addr\":null,\"apparent_port\":null,\
                \"actual_addr\":null,\"actual_port\":null,\"flags\":null,"
            .into();
    };
    let app = match s.app_addr {
        AppAddr::Interface => "*".to_string(),
        AppAddr::Fixed(a) => a.to_string(),
    };
    format!(
        "\"protocol\":{},\"apparent_addr\":{},\"apparent_port\":{},\"actual_addr\":{},\
         \"actual_port\":{},\"flags\":{},",
        json_str(s.protocol.name()),
        json_str(&app),
        s.app_port,
        json_str(&s.act_addr.to_string()),
        s.act_port,
        s.flags.0
    )
}

fn drops_text(d: &[u64; DROP_REASONS]) -> String {
    let total: u64 = d.iter().sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| d[**r as usize] > 0)
        .map(|r| format!("{} {}", r.name(), d[*r as usize]))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

fn drops_json(d: &[u64; DROP_REASONS]) -> String {
    let parts: Vec<String> = DropReason::ALL
        .iter()
        .map(|r| format!("\"{}\":{}", r.name(), d[*r as usize]))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// A JSON string literal: quotes, backslashes and control characters escaped.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Uptime-style `[Nd ]HH:MM:SS` (also `netnat top`'s).
pub(crate) fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date library: days to civil date
/// after Howard Hinnant's algorithm.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn report() -> Report {
        let mut c = Counters {
            in_packets: 3,
            in_bytes: 180,
            out_packets: 2,
            out_bytes: 1500,
            new_connections: 1,
            last_seen: 1_700_000_000,
            ..Counters::default()
        };
        c.drops[DropReason::Malformed as usize] = 2;
        Report {
            queue: 4747,
            queues: 1,
            expression: "compat".into(),
            uptime_secs: 3725,
            queue_stats: QueueStats {
                received: 5,
                verdicts: 5,
                enobufs: 0,
                async_errors: 1,
                failed_closed: 2,
                send_failed_dropped: 3,
                verdicts_lost: 0,
                header_only: 0,
            },
            unattributed: [0, 0, 4, 0],
            passed: 7,
            log_lost: 0,
            start_unix: 1_700_000_000,
            reloads_ok: 2,
            reloads_refused: 1,
            flows_refused: FlowsRefused { star: 3, udp: 4 },
            offload: None,
            services: vec![
                ServiceReport {
                    line: "service pub0 port * 80 TCP 192.168.77.10 8080 0x8000".into(),
                    iface: "pub0".into(),
                    state: ServiceState::Active {
                        apparent: "10.99.1.1:80".parse().unwrap(),
                    },
                    counters: c,
                },
                ServiceReport {
                    line: "service ppp0 port * 25 TCP 192.168.77.25 25 0x0000".into(),
                    iface: "ppp0".into(),
                    state: ServiceState::Waiting,
                    counters: Counters::default(),
                },
            ],
        }
    }

    #[test]
    fn json_has_every_number_and_state() {
        let j = report().json();
        assert!(j.starts_with("{\"format\":1,\"queue\":{\"num\":4747,\"count\":1,\"expression\":\"compat\",\"received\":5,\"verdicts\":5,\"enobufs\":0,\"async_errors\":1,\"failed_closed\":2,\"send_failed_dropped\":3,\"verdicts_lost\":0,\"header_only\":0},\"uptime_secs\":3725,\"passed\":7,\"log_lost\":0,\"start_unix\":1700000000,\"reloads_ok\":2,\"reloads_refused\":1,\"unattributed_drops\":{\"oversize\":0,\"malformed\":0,\"unmapped_reply\":4,\"unrelated_icmp\":0},\"services\":[{"), "{j}");
        assert!(j.contains("{\"service\":\"service pub0 port * 80 TCP 192.168.77.10 8080 0x8000\",\"iface\":\"pub0\",\"protocol\":\"TCP\",\"apparent_addr\":\"*\",\"apparent_port\":80,\"actual_addr\":\"192.168.77.10\",\"actual_port\":8080,\"flags\":32768,\"state\":\"active\",\"apparent\":\"10.99.1.1:80\",\"in_packets\":3,\"in_bytes\":180,\"out_packets\":2,\"out_bytes\":1500,\"new_connections\":1,\"icmp_errors\":0,\"records\":0,\"records_suppressed\":0,\"drops\":{\"oversize\":0,\"malformed\":2,\"unmapped_reply\":0,\"unrelated_icmp\":0},\"last_seen\":1700000000}"), "{j}");
        assert!(
            j.contains("\"iface\":\"ppp0\",\"protocol\":\"TCP\",\"apparent_addr\":\"*\",\"apparent_port\":25,\"actual_addr\":\"192.168.77.25\",\"actual_port\":25,\"flags\":0,"),
            "{j}"
        );
        assert!(
            j.contains("\"state\":\"waiting\",\"apparent\":null,")
                && j.ends_with(
                    "null}],\"flows_refused\":{\"star\":3,\"udp\":4},\"offload\":{\"enabled\":\
                     false,\"flows\":0,\"flows_limit\":0,\"packets\":0,\"bytes\":0}}\n"
                ),
            "{j}"
        );
        // Balanced braces and brackets: a cheap well-formedness check.
        let opens = j.matches('{').count() + j.matches('[').count();
        let closes = j.matches('}').count() + j.matches(']').count();
        assert_eq!(opens, closes);
    }

    #[test]
    fn several_queues_show_as_a_range() {
        let r = Report {
            queues: 2,
            ..report()
        };
        assert!(
            r.text()
                .starts_with("netnat: 2 services, queues 4747-4748 (compat")
        );
        assert!(
            r.json()
                .starts_with("{\"format\":1,\"queue\":{\"num\":4747,\"count\":2,")
        );
    }

    #[test]
    fn text_shows_services_waiting_and_drops() {
        let t = report().text();
        assert!(
            t.contains("netnat: 2 services, queue 4747 (compat queue expression), up 01:02:05")
        );
        assert!(
            t.contains("not a service's: 7 passed, drops 4 (unmapped_reply 4)"),
            "{t}"
        );
        assert!(t.contains("  apparent 10.99.1.1:80\n  in  3 packets 180 bytes; out 2 packets 1500 bytes\n  1 new connections, 0 ICMP errors, drops 2 (malformed 2), last seen 2023-11-14T22:13:20Z"), "{t}");
        assert!(t.contains("  waiting for ppp0's address\n"), "{t}");
        assert!(t.contains("last seen never"), "{t}");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
