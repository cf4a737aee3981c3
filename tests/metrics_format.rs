//! The metrics `netnat status --format prometheus` prints, read back by a real parser
//! (prometheus_client's, tests/scripts/prom_parse.py): every family parses, every figure of the
//! report comes back with its labels, escaped label values come back as they were.

mod common;

use netnat::control::status::{Report, ServiceReport, ServiceState};
use netnat::engine::stats::{Counters, DropReason};
use netnat::queue::QueueStats;

fn report() -> Report {
    let mut c = Counters {
        in_packets: 11,
        in_bytes: 1100,
        out_packets: 9,
        out_bytes: 9000,
        new_connections: 3,
        icmp_errors: 2,
        last_seen: 1_764_658_800,
        ..Counters::default()
    };
    c.drops[DropReason::UnmappedReply as usize] = 5;
    Report {
        queue: 4747,
        queues: 2,
        expression: "native".into(),
        uptime_secs: 42,
        queue_stats: QueueStats {
            received: 20,
            verdicts: 19,
            enobufs: 1,
            async_errors: 0,
            failed_closed: 0,
            send_failed_dropped: 0,
            verdicts_lost: 0,
            ..QueueStats::default()
        },
        unattributed: [1, 0, 0, 0],
        passed: 4,
        log_lost: 0,
        start_unix: 1_764_658_000,
        reloads_ok: 3,
        reloads_refused: 1,
        flows_refused: Default::default(),
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
                line: "service pub0 port 2001:db8::1 53 UDP fd00::53 53 0x0000".into(),
                // Not a real interface name: it shows that label values are escaped.
                iface: "a\"b\\c".into(),
                state: ServiceState::Draining {
                    apparent: "[2001:db8::1]:53".parse().unwrap(),
                },
                counters: Counters::default(),
            },
        ],
    }
}

#[test]
fn a_real_parser_reads_every_figure_back() {
    let text = netnat::control::metrics::render(&report());
    let samples = common::prometheus_samples(&text);
    let has = |s: &str| samples.iter().any(|l| l == s);
    let svc0 = "actual=\"192.168.77.10:8080\",apparent=\"*:80\",id=\"0\",iface=\"pub0\",\
                protocol=\"TCP\"";
    for want in [
        "netnat_queue_received_total{} 20 counter".to_string(),
        "netnat_queue_verdicts_total{} 19 counter".into(),
        "netnat_queue_enobufs_total{} 1 counter".into(),
        "netnat_queue_threads{} 2 gauge".into(),
        "netnat_reloads_total{result=\"ok\"} 3 counter".into(),
        "netnat_reloads_total{result=\"refused\"} 1 counter".into(),
        "netnat_start_time_seconds{} 1764658000 gauge".into(),
        "netnat_unattributed_drops_total{reason=\"oversize\"} 1 counter".into(),
        format!(
            "netnat_build_info{{version=\"{}\"}} 1 gauge",
            env!("CARGO_PKG_VERSION")
        ),
        format!("netnat_service_in_packets_total{{{svc0}}} 11 counter"),
        format!("netnat_service_in_bytes_total{{{svc0}}} 1100 counter"),
        format!("netnat_service_out_packets_total{{{svc0}}} 9 counter"),
        format!("netnat_service_out_bytes_total{{{svc0}}} 9000 counter"),
        format!("netnat_service_new_connections_total{{{svc0}}} 3 counter"),
        format!("netnat_service_icmp_errors_total{{{svc0}}} 2 counter"),
        format!("netnat_service_drops_total{{{svc0},reason=\"unmapped_reply\"}} 5 counter"),
        "netnat_service_apparent_address{actual=\"192.168.77.10:8080\",address=\"10.99.1.1\",\
         apparent=\"*:80\",id=\"0\",iface=\"pub0\",protocol=\"TCP\"} 1 gauge"
            .into(),
        format!("netnat_service_draining{{{svc0}}} 0 gauge"),
        // The parser unescapes: the value is the interface name as it was.
        "netnat_service_draining{actual=\"[fd00::53]:53\",apparent=\"[2001:db8::1]:53\",\
         id=\"1\",iface=\"a\"b\\c\",protocol=\"UDP\"} 1 gauge"
            .into(),
    ] {
        assert!(has(&want), "missing {want} in\n{}", samples.join("\n"));
    }
    // Every sample line of the text came back as a sample.
    let lines = text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(samples.len(), lines, "{}", samples.join("\n"));
}

#[test]
fn a_report_without_services_parses() {
    let r = Report {
        services: Vec::new(),
        ..report()
    };
    let samples = common::prometheus_samples(&netnat::control::metrics::render(&r));
    assert!(samples.iter().any(|l| l == "netnat_services{} 0 gauge"));
}
