//! The status report as metrics in the Prometheus text exposition format (version 0.0.4),
//! for `netnat status --format prometheus` (node_exporter's textfile collector) and
//! `metrics-listen` ([`crate::control::metrics_http`]).
//!
//! Built from the very [`Report`] that `netnat status` prints, so that the two agree by
//! construction. One family per figure, each with `# HELP` and `# TYPE`; counters end in
//! `_total` (as OpenMetrics requires of a counter's samples); label values are escaped.
//!
//! Per-service families carry the labels `id` (the service's index in the report, stable
//! until the service set changes), `iface`, `protocol`, `apparent` (as configured, `*:80` for a
//! service on its interface's address) and `actual`. `netnat_service_info` adds the canonical
//! line (`service`) and `state`; `netnat_service_apparent_address` gives the address a `*`
//! service resolves to now (value 1, the address as the `address` label).

use std::fmt::Write;

use crate::config::{self, AppAddr};
use crate::control::status::{Report, ServiceReport, ServiceState};
use crate::engine::stats::{Counters, DROP_REASONS, DropReason, queue_fields};

/// The `Content-Type` of [`render`]'s output over HTTP.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of `r`, one family after another, ending with a newline.
pub fn render(r: &Report) -> String {
    let mut o = String::with_capacity(2048 + r.services.len() * 2048);
    let q = &r.queue_stats;

    family(
        &mut o,
        "netnat_build_info",
        "gauge",
        "netnat's version (value 1)",
    );
    let _ = writeln!(
        o,
        "netnat_build_info{{version=\"{}\"}} 1",
        escape(env!("CARGO_PKG_VERSION"))
    );
    gauge(
        &mut o,
        "netnat_start_time_seconds",
        "When the daemon started, Unix seconds",
        r.start_unix,
    );
    gauge(
        &mut o,
        "netnat_uptime_seconds",
        "Seconds since the daemon started",
        r.uptime_secs,
    );
    gauge(
        &mut o,
        "netnat_queue_threads",
        "Queues bound, one consumer thread each",
        u64::from(r.queues),
    );
    gauge(
        &mut o,
        "netnat_queue_first",
        "First queue number",
        u64::from(r.queue),
    );
    for (name, v) in queue_fields(q) {
        counter(
            &mut o,
            &format!("netnat_queue_{name}_total"),
            queue_help(name),
            v,
        );
    }
    for (name, help, v) in [
        (
            "netnat_passed_total",
            "Queued packets of no service passed on unchanged",
            r.passed,
        ),
        (
            "netnat_log_lines_lost_total",
            "Log lines lost (log queue full, or log socket full, stalled or gone)",
            r.log_lost,
        ),
    ] {
        counter(&mut o, name, help, v);
    }
    if let Some(off) = &r.offload {
        gauge(
            &mut o,
            "netnat_offload_flows",
            "Flows in the kernel's offload flow sets (each direction of a connection is one)",
            off.flows,
        );
        counter(
            &mut o,
            "netnat_offload_packets_total",
            "Packets the kernel rewrote for offloaded flows without the consumer (also in the services' counters)",
            off.packets,
        );
        counter(
            &mut o,
            "netnat_offload_bytes_total",
            "Bytes of those packets",
            off.bytes,
        );
    }
    family(
        &mut o,
        "netnat_reloads_total",
        "counter",
        "Reloads (SIGHUP or netnat reload) by result",
    );
    let _ = writeln!(o, "netnat_reloads_total{{result=\"ok\"}} {}", r.reloads_ok);
    let _ = writeln!(
        o,
        "netnat_reloads_total{{result=\"refused\"}} {}",
        r.reloads_refused
    );
    family(
        &mut o,
        "netnat_unattributed_drops_total",
        "counter",
        "Packets of no service dropped, by reason",
    );
    drops(
        &mut o,
        "netnat_unattributed_drops_total",
        "",
        &r.unattributed,
    );
    gauge(
        &mut o,
        "netnat_services",
        "Services in the report (active, draining, waiting or left out)",
        r.services.len() as u64,
    );

    let labels: Vec<String> = r
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| service_labels(i, s))
        .collect();
    family(
        &mut o,
        "netnat_service_info",
        "gauge",
        "A service: its canonical line and state (value 1)",
    );
    for (s, l) in r.services.iter().zip(&labels) {
        let _ = writeln!(
            o,
            "netnat_service_info{{{l},service=\"{}\",state=\"{}\"}} 1",
            escape(&s.line),
            state_name(s.state)
        );
    }
    family(
        &mut o,
        "netnat_service_draining",
        "gauge",
        "1 while a removed service still translates its established connections",
    );
    for (s, l) in r.services.iter().zip(&labels) {
        let d = matches!(s.state, ServiceState::Draining { .. });
        let _ = writeln!(o, "netnat_service_draining{{{l}}} {}", u8::from(d));
    }
    family(
        &mut o,
        "netnat_service_apparent_address",
        "gauge",
        "The address a * service resolves to now (value 1)",
    );
    for (s, l) in r.services.iter().zip(&labels) {
        if !is_interface(&s.line) {
            continue;
        }
        if let ServiceState::Active { apparent } | ServiceState::Draining { apparent } = s.state {
            let _ = writeln!(
                o,
                "netnat_service_apparent_address{{{l},address=\"{}\"}} 1",
                apparent.ip()
            );
        }
    }
    let figures: Vec<_> = r.services.iter().map(|s| s.counters.figures()).collect();
    for (i, (name, _)) in Counters::default().figures().into_iter().enumerate() {
        let metric = format!("netnat_service_{name}_total");
        family(&mut o, &metric, "counter", service_help(name));
        for (f, l) in figures.iter().zip(&labels) {
            let _ = writeln!(o, "{metric}{{{l}}} {}", f[i].1);
        }
    }
    family(
        &mut o,
        "netnat_service_drops_total",
        "counter",
        "Packets of the service dropped, by reason",
    );
    for (s, l) in r.services.iter().zip(&labels) {
        drops(
            &mut o,
            "netnat_service_drops_total",
            &format!("{l},"),
            &s.counters.drops,
        );
    }
    family(
        &mut o,
        "netnat_service_last_seen_seconds",
        "gauge",
        "Unix seconds of the last translated packet (0: never)",
    );
    for (s, l) in r.services.iter().zip(&labels) {
        let _ = writeln!(
            o,
            "netnat_service_last_seen_seconds{{{l}}} {}",
            s.counters.last_seen
        );
    }
    o
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn gauge(o: &mut String, name: &str, help: &str, v: u64) {
    family(o, name, "gauge", help);
    let _ = writeln!(o, "{name} {v}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    family(o, name, "counter", help);
    let _ = writeln!(o, "{name} {v}");
}

/// One sample per reason; `prefix` is the labels before `reason` (with its comma) or empty.
fn drops(o: &mut String, name: &str, prefix: &str, d: &[u64; DROP_REASONS]) {
    for r in DropReason::ALL {
        let _ = writeln!(
            o,
            "{name}{{{prefix}reason=\"{}\"}} {}",
            r.name(),
            d[r as usize]
        );
    }
}

/// The HELP of the metric of the queue figure `name` (a [`queue_fields`] name).
fn queue_help(name: &str) -> &'static str {
    match name {
        "received" => "Packets received from the queues",
        "verdicts" => "Verdicts sent to the queues",
        "enobufs" => "ENOBUFS on the queue sockets: the kernel dropped packets it could not queue",
        "async_errors" => "Asynchronous errors reported by the queue sockets",
        "failed_closed" => "Rewritten packets whose payload could not be returned, dropped",
        "send_failed_dropped" => {
            "Packets whose verdict could not be sent, dropped by a second verdict"
        }
        "verdicts_lost" => "Packets whose verdict could not be sent at all",
        "header_only" => "Header-only verdicts: long packets accepted for the kernel's rewrite",
        // A figure added to the queue statistics without a text here (a unit test says so).
        _ => "A figure of the queue statistics",
    }
}

/// The HELP of the metric of the service figure `name` (a [`Counters::figures`] name).
fn service_help(name: &str) -> &'static str {
    match name {
        "in_packets" => "Packets translated on the way in (public side to actual server)",
        "in_bytes" => "IP bytes translated on the way in",
        "out_packets" => "Packets translated on the way back (actual server to public side)",
        "out_bytes" => "IP bytes translated on the way back",
        "new_connections" => "New connections (inbound TCP SYNs, new UDP flows)",
        "icmp_errors" => "ICMP errors translated for the service",
        "records" => "Records written for the service's flags",
        "records_suppressed" => {
            "Records held back by the service's rate limit (log-rate, log-burst)"
        }
        // A figure added to the counters without a text here (a unit test says so).
        _ => "A figure of the service's counters",
    }
}

fn state_name(s: ServiceState) -> &'static str {
    match s {
        ServiceState::Active { .. } => "active",
        ServiceState::Draining { .. } => "draining",
        ServiceState::Waiting => "waiting",
        ServiceState::Conflict => "conflict",
    }
}

fn is_interface(line: &str) -> bool {
    matches!(
        config::parse_service(line).map(|s| s.app_addr),
        Ok(AppAddr::Interface)
    )
}

/// `id="0",iface="pub0",protocol="TCP",apparent="*:80",actual="192.168.77.10:8080"`, read
/// back from the canonical line like the JSON's fields.
fn service_labels(id: usize, s: &ServiceReport) -> String {
    let (protocol, apparent, actual) = match config::parse_service(&s.line) {
        Ok(svc) => {
            let app = match svc.app_addr {
                AppAddr::Interface => format!("*:{}", svc.app_port),
                AppAddr::Fixed(a) => std::net::SocketAddr::new(a, svc.app_port).to_string(),
            };
            let act = std::net::SocketAddr::new(svc.act_addr, svc.act_port).to_string();
            (svc.protocol.name().to_string(), app, act)
        }
        // Cannot happen for a canonical line; the labels stay present all the same.
        Err(_) => (String::new(), String::new(), String::new()),
    };
    format!(
        "id=\"{id}\",iface=\"{}\",protocol=\"{}\",apparent=\"{}\",actual=\"{}\"",
        escape(&s.iface),
        escape(&protocol),
        escape(&apparent),
        escape(&actual)
    )
}

/// A label value: backslash, double quote and line feed escaped, as the format requires.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// A HELP text: backslash and line feed escaped (quotes are literal there).
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::tests::report;
    use crate::queue::QueueStats;

    /// The value of the one sample whose name and labels are `sample` exactly.
    fn value(text: &str, sample: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_figure_of_the_report_is_a_sample() {
        let t = render(&report());
        let svc0 = "id=\"0\",iface=\"pub0\",protocol=\"TCP\",apparent=\"*:80\",actual=\"192.168.77.10:8080\"";
        for (sample, v) in [
            ("netnat_queue_received_total", 5),
            ("netnat_queue_verdicts_total", 5),
            ("netnat_queue_async_errors_total", 1),
            ("netnat_queue_failed_closed_total", 2),
            ("netnat_queue_send_failed_dropped_total", 3),
            ("netnat_queue_verdicts_lost_total", 0),
            ("netnat_queue_enobufs_total", 0),
            ("netnat_queue_threads", 1),
            ("netnat_passed_total", 7),
            ("netnat_start_time_seconds", 1_700_000_000),
            ("netnat_uptime_seconds", 3725),
            ("netnat_reloads_total{result=\"ok\"}", 2),
            ("netnat_reloads_total{result=\"refused\"}", 1),
            (
                "netnat_unattributed_drops_total{reason=\"unmapped_reply\"}",
                4,
            ),
            ("netnat_services", 2),
        ] {
            assert_eq!(value(&t, sample), Some(v), "{sample} in\n{t}");
        }
        for (name, v) in [
            ("netnat_service_in_packets_total", 3),
            ("netnat_service_in_bytes_total", 180),
            ("netnat_service_out_packets_total", 2),
            ("netnat_service_out_bytes_total", 1500),
            ("netnat_service_new_connections_total", 1),
            ("netnat_service_icmp_errors_total", 0),
            ("netnat_service_draining", 0),
            ("netnat_service_last_seen_seconds", 1_700_000_000),
        ] {
            assert_eq!(value(&t, &format!("{name}{{{svc0}}}")), Some(v), "{name}");
        }
        assert_eq!(
            value(
                &t,
                &format!("netnat_service_drops_total{{{svc0},reason=\"malformed\"}}")
            ),
            Some(2)
        );
        assert_eq!(
            value(
                &t,
                &format!("netnat_service_apparent_address{{{svc0},address=\"10.99.1.1\"}}")
            ),
            Some(1)
        );
        // The waiting `*` service has no address yet: no apparent-address sample.
        assert_eq!(t.matches("netnat_service_apparent_address{").count(), 1);
        assert!(t.contains(&format!(
            "netnat_service_info{{{svc0},service=\"service pub0 port * 80 TCP 192.168.77.10 \
             8080 0x8000\",state=\"active\"}} 1"
        )));
        assert!(t.contains("state=\"waiting\"} 1"));
        assert!(t.contains(&format!(
            "netnat_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn families_are_declared_once_before_their_samples() {
        let t = render(&report());
        let mut declared: Vec<&str> = Vec::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(!declared.contains(&name), "{name} declared twice");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                declared.push(name);
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last(), Some(&name), "{line} outside its family");
            }
        }
        assert!(t.ends_with('\n'));
    }

    #[test]
    fn draining_fixed_and_v6_services() {
        let mut r = report();
        r.services.push(ServiceReport {
            line: "service pub0 port 2001:db8::1 53 UDP fd00::53 53 0x0000".into(),
            iface: "pub0".into(),
            state: ServiceState::Draining {
                apparent: "[2001:db8::1]:53".parse().unwrap(),
            },
            counters: Counters::default(),
        });
        let t = render(&r);
        let l = "id=\"2\",iface=\"pub0\",protocol=\"UDP\",apparent=\"[2001:db8::1]:53\",\
                 actual=\"[fd00::53]:53\"";
        assert_eq!(
            value(&t, &format!("netnat_service_draining{{{l}}}")),
            Some(1)
        );
        // A fixed address is in the `apparent` label already: no apparent-address sample.
        assert!(!t.contains("address=\"2001:db8::1\""), "{t}");
    }

    #[test]
    fn every_queue_and_service_figure_has_its_own_help() {
        let fallback = queue_help("");
        for (name, _) in queue_fields(&QueueStats::default()) {
            assert_ne!(queue_help(name), fallback, "{name}");
        }
        let fallback = service_help("");
        for (name, _) in Counters::default().figures() {
            assert_ne!(service_help(name), fallback, "{name}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
        let mut r = report();
        r.services[1].iface = "we\"ird\\".into();
        assert!(render(&r).contains("iface=\"we\\\"ird\\\\\""));
    }
}
