//! Issue 13 in the kernel: port ranges (1:1 and onto one port), several servers and `from`
//! lists with real clients (curl, a UDP exchange, hundreds of connections), over IPv4 and
//! IPv6, through `netnat run` on the router of a test topology whose namespaces are named
//! `nn-<pid>-<n>-nfw<role>`.
//!
//! Needs root and: iproute2 nftables curl python3.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::scenario::{Netnat, random_file, sha256};
use common::status::Doc;
use common::{CmdOutput, Family, PYTHON, Proc, Topology, require_root, script};

/// The client's second address, which `from` lists leave out.
fn other_client(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "10.99.1.3",
        Family::V6 => "fd99:1::3",
    }
}

/// An address as the records write it: 32-bit (IPv4) or 128-bit (IPv6) hex.
fn hex(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(a) => format!("{:08x}", u32::from(a)),
        std::net::IpAddr::V6(a) => format!("{:032x}", u128::from(a)),
    }
}

/// The small HTTP server of the harness on the actual server at `port`, logging to `log`.
fn http_server(t: &Topology, fam: Family, port: u16, log: &Path) -> Proc {
    let p = t.spawn(
        &t.srv,
        &format!("http-{port}"),
        &[
            PYTHON,
            &script("http_server.py"),
            fam.server(),
            &port.to_string(),
            log.to_str().unwrap(),
            "120",
        ],
    );
    t.srv.wait_listening("tcp", port, Duration::from_secs(10));
    p
}

/// `curl http://app:port/path` from the client (from `source` when given), with the remote
/// endpoint curl saw on the last line.
fn curl(t: &Topology, fam: Family, port: u16, path: &str, source: Option<&str>) -> CmdOutput {
    let url = format!("http://{}{path}", fam.hostport(fam.router_pub(), port));
    let mut argv = vec![
        "curl",
        "-sS",
        "-g",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "-w",
        "\nREMOTE %{remote_ip} %{remote_port}\n",
    ];
    if let Some(s) = source {
        argv.extend(["--interface", s]);
    }
    argv.push(&url);
    t.cli.run(&argv)
}

/// Polls `ss <flag> <filter>` in the server until it lists `n` sockets (at most 10 s).
fn wait_sockets(t: &Topology, flag: &str, filter: &str, n: usize) {
    let start = std::time::Instant::now();
    loop {
        let out = t.srv.run(&["ss", flag, filter]);
        if out.stdout.lines().filter(|l| !l.trim().is_empty()).count() >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "fewer than {n} sockets for {filter}: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(t: &Topology, config: &str) -> Netnat {
    Netnat::start(t, config, "netnat").unwrap_or_else(|e| panic!("netnat not ready: {e}"))
}

/// A range mapped 1:1: every port reaches its own actual port, the client sees only the
/// apparent endpoint, the server the real client; long replies (header-only, written by the
/// kernel from the per-port maps) arrive whole; a port past the range is not mapped.
fn range(name: &str, fam: Family) {
    require_root(name);
    let t = Topology::with_prefix("nfw");
    let server = fam.server();
    let config = format!(
        "service pub0 port * 8000-8009 TCP {server} 9000-9009 0x8000\n\
         service pub0 port * 6000-6009 UDP {server} 7000-7009\n\
         queues 1\n"
    );
    let logs = [t.dir.file("http-9003.log"), t.dir.file("http-9009.log")];
    let _h3 = http_server(&t, fam, 9003, &logs[0]);
    let _h9 = http_server(&t, fam, 9009, &logs[1]);
    let udp_log = t.dir.file("udp.log");
    let _udp = t.spawn(
        &t.srv,
        "udp-7005",
        &[
            PYTHON,
            &script("udp_server.py"),
            server,
            "7005",
            udp_log.to_str().unwrap(),
            "120",
        ],
    );
    t.srv.wait_listening("udp", 7005, Duration::from_secs(10));
    // A file of 3 MiB behind apparent port 8005: its replies are far longer than the copy range.
    let dir = t.dir.file("www");
    fs::create_dir_all(&dir).unwrap();
    let file = random_file(&t, "www/blob", 3 << 20);
    let _www = t.spawn(
        &t.srv,
        "www-9005",
        &[
            PYTHON,
            "-m",
            "http.server",
            "--bind",
            server,
            "--directory",
            dir.to_str().unwrap(),
            "9005",
        ],
    );
    t.srv.wait_listening("tcp", 9005, Duration::from_secs(10));
    let mut netnat = start(&t, &config);

    let client = fam.client();
    for (port, log) in [(8003u16, &logs[0]), (8009, &logs[1])] {
        let out = curl(&t, fam, port, "/probe", None);
        let ctx = || format!("{out}\n{}", netnat.proc.evidence());
        assert!(out.success(), "{name}: GET :{port} failed\n{}", ctx());
        assert!(
            out.stdout.contains(&format!("peer={client} ")),
            "{name}: the server on {} did not see the real client\n{}",
            port + 1000,
            ctx()
        );
        let remote = format!("REMOTE {} {port}", fam.router_pub());
        assert!(
            out.stdout.contains(&remote),
            "{name}: {remote} missing\n{}",
            ctx()
        );
        let seen = fs::read_to_string(log).unwrap_or_default();
        assert!(seen.contains(&format!("peer={client} ")), "{name}: {seen}");
    }
    // The mapping event shows the apparent port the client used.
    let event = format!(":{}:8009:6", hex(fam.router_pub()));
    netnat
        .proc
        .wait_stderr(&event, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{name}: no mapping event {event}: {e}"));

    // Long replies through the header-only maps of port 8005 → 9005.
    let got = t.dir.file("got");
    let out = t.cli.run(&[
        "curl",
        "-sS",
        "-g",
        "--noproxy",
        "*",
        "--max-time",
        "30",
        "-o",
        got.to_str().unwrap(),
        &format!("http://{}/blob", fam.hostport(fam.router_pub(), 8005)),
    ]);
    assert!(
        out.success(),
        "{name}: download failed\n{out}\n{}",
        netnat.proc.evidence()
    );
    assert_eq!(sha256(&got), sha256(&file), "{name}: the download differs");

    // UDP 6005 → 7005 and back from 6005.
    let out = t.cli.run(&[
        PYTHON,
        &script("udp_client.py"),
        fam.router_pub(),
        "6005",
        "hello-range",
        "2",
        "3",
    ]);
    assert!(
        out.success(),
        "{name}: no UDP reply\n{out}\n{}",
        netnat.proc.evidence()
    );
    let want = format!("from={} 6005 data=peer={client} ", fam.router_pub());
    assert!(out.stdout.contains(&want), "{name}: {want} missing\n{out}");

    // Past the range: no service, the router's own stack refuses the connection.
    let out = curl(&t, fam, 8010, "/probe", None);
    assert!(!out.success(), "{name}: port 8010 is not mapped\n{out}");
    assert!(
        out.stderr.contains("Connection refused") || out.stderr.contains("Couldn't connect"),
        "{name}: {out}"
    );
    let status = netnat.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{name}: {status:?}");
}

/// A `from` list: the listed client is translated; the other address of the same client
/// machine meets no service (the router refuses the connection) and is logged as refused.
fn from(name: &str, fam: Family) {
    require_root(name);
    let t = Topology::with_prefix("nfw");
    let (client, other) = (fam.client(), other_client(fam));
    let len = if fam == Family::V4 { 24 } else { 64 };
    // Deprecated at once (IPv6), a secondary (IPv4): never the source the client picks by
    // itself, only when curl binds it.
    let cidr = format!("{other}/{len}");
    match fam {
        Family::V4 => t.cli.addr("eth0", &cidr),
        Family::V6 => {
            t.cli.ip(&[
                "addr",
                "add",
                &cidr,
                "dev",
                "eth0",
                "nodad",
                "preferred_lft",
                "0",
            ]);
        }
    }
    let server = fam.server();
    let config = format!(
        "service pub0 port * 80 TCP {server} 8080 0x1000 from {client}\n\
         service pub0 port * 53 UDP {server} 5353 from {client},{}\n\
         queues 1\n",
        match fam {
            Family::V4 => "198.51.100.0/24",
            Family::V6 => "2001:db8::/32",
        }
    );
    let log = t.dir.file("http.log");
    let _http = http_server(&t, fam, 8080, &log);
    let udp_log = t.dir.file("udp.log");
    let _udp = t.spawn(
        &t.srv,
        "udp-5353",
        &[
            PYTHON,
            &script("udp_server.py"),
            server,
            "5353",
            udp_log.to_str().unwrap(),
            "120",
        ],
    );
    t.srv.wait_listening("udp", 5353, Duration::from_secs(10));
    let mut netnat = start(&t, &config);

    let out = curl(&t, fam, 80, "/listed", Some(client));
    assert!(
        out.success(),
        "{name}: the listed client failed\n{out}\n{}",
        netnat.proc.evidence()
    );
    assert!(
        out.stdout.contains(&format!("peer={client} ")),
        "{name}: {out}"
    );
    assert!(
        out.stdout
            .contains(&format!("REMOTE {} 80", fam.router_pub())),
        "{name}: {out}"
    );

    let out = curl(&t, fam, 80, "/other", Some(other));
    assert!(
        !out.success(),
        "{name}: the unlisted client got through\n{out}"
    );
    assert!(
        out.stderr.contains("Connection refused") || out.stderr.contains("Couldn't connect"),
        "{name}: the router itself should refuse it: {out}"
    );
    let seen = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !seen.contains("/other"),
        "{name}: the server saw the unlisted client: {seen}"
    );
    let record = format!("dr:pub0:in:pass:refused:{}:", hex(other));
    netnat
        .proc
        .wait_stderr(&record, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{name}: no refused record {record}: {e}"));

    // UDP from the listed client (its first address is the source) is answered.
    let out = t.cli.run(&[
        PYTHON,
        &script("udp_client.py"),
        fam.router_pub(),
        "53",
        "hello-from",
        "2",
        "3",
    ]);
    assert!(
        out.success(),
        "{name}: no UDP reply\n{out}\n{}",
        netnat.proc.evidence()
    );
    let want = format!("from={} 53 data=peer={client} ", fam.router_pub());
    assert!(out.stdout.contains(&want), "{name}: {want} missing\n{out}");
    let status = netnat.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{name}: {status:?}");
}

/// The second actual server's address (on the server's own interface, beside the first).
fn second_server(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "192.168.77.11",
        Family::V6 => "fd99:77::11",
    }
}

/// `count` TCP connections one after the other from the client to `app`:`port`, each a
/// `GET /c<i>`; prints `ok <n>` with the number answered with 200.
const CONNECTIONS: &str = r#"
import socket, sys
app, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in app else socket.AF_INET
ok = 0
for i in range(count):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((app, port))
        s.sendall(f"GET /c{i} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        if data.startswith(b"HTTP/1.0 200"):
            ok += 1
        else:
            print(f"c{i}: {data[:80]!r}", flush=True)
    except OSError as e:
        print(f"c{i}: {e}", flush=True)
print(f"ok {ok}", flush=True)
"#;

/// UDP datagrams of `size` bytes from the client's `sport` to `app`:`port`, each echoed
/// whole; prints `ok <n>` with the number that came back identical.
const BIG_DATAGRAMS: &str = r#"
import os, socket, sys
client, sport, app, port, size, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
fam = socket.AF_INET6 if ":" in app else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((client, sport))
s.connect((app, port))
s.settimeout(2)
ok = 0
for i in range(count):
    p = os.urandom(size)
    s.send(p)
    try:
        if s.recv(65535) == p:
            ok += 1
    except OSError:
        pass
print(f"ok {ok}", flush=True)
"#;

/// Several servers: 300 connections spread over both, none split (each answered whole, each
/// request seen by exactly one server); a UDP flow of datagrams longer than the copy range
/// (header-only, the verdict naming the flow's server) reaches each server and comes back.
fn servers(name: &str, fam: Family) {
    require_root(name);
    let t = Topology::with_prefix("nfw");
    let (first, second) = (fam.server(), second_server(fam));
    let len = if fam == Family::V4 { 24 } else { 64 };
    t.srv.addr("eth0", &format!("{second}/{len}"));
    let config = format!(
        "service pub0 port * 80 TCP {first},{second} 8080 0x8000\n\
         service pub0 port * 53 UDP {first},{second} 5353\n\
         queues 1\n"
    );
    let logs = [t.dir.file("first.log"), t.dir.file("second.log")];
    let mut procs = Vec::new();
    for (i, (addr, log)) in [first, second].iter().zip(&logs).enumerate() {
        procs.push(t.spawn(
            &t.srv,
            &format!("http-{i}"),
            &[
                PYTHON,
                &script("http_server.py"),
                addr,
                "8080",
                log.to_str().unwrap(),
                "120",
            ],
        ));
        procs.push(t.spawn(
            &t.srv,
            &format!("echo-{i}"),
            &[PYTHON, &script("udp_echo.py"), addr, "5353", "120"],
        ));
    }
    for (flag, port) in [("-Hlnt", "sport = :8080"), ("-Hlnu", "sport = :5353")] {
        wait_sockets(&t, flag, port, 2);
    }
    let netnat = start(&t, &config);
    let app = fam.router_pub();

    let out = t.cli.run_timeout(
        &[PYTHON, "-c", CONNECTIONS, app, "80", "300"],
        Duration::from_secs(120),
    );
    assert!(
        out.stdout.trim_end().ends_with("ok 300"),
        "{name}: not every connection was answered whole\n{out}\n{}",
        netnat.proc.evidence()
    );
    let seen: Vec<Vec<String>> = logs
        .iter()
        .map(|l| {
            fs::read_to_string(l)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split("path=/").nth(1).map(str::to_owned))
                .collect()
        })
        .collect();
    assert!(
        seen[0].len() > 60 && seen[1].len() > 60,
        "{name}: the spread is lopsided: {} and {}",
        seen[0].len(),
        seen[1].len()
    );
    let mut all: Vec<&String> = seen.iter().flatten().collect();
    assert_eq!(all.len(), 300, "{name}: every request at one server");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 300, "{name}: a request reached both servers");
    for log in &seen {
        assert!(log.iter().all(|p| p.starts_with('c')), "{name}: {log:?}");
    }

    // One flow to each server, by the hash netnat uses, of datagrams past the copy range.
    let servers = [first, second].map(|a| a.parse::<std::net::IpAddr>().unwrap());
    let client: std::net::IpAddr = fam.client().parse().unwrap();
    for (i, server) in servers.iter().enumerate() {
        let sport = (41000u16..42000)
            .find(|&p| {
                let c = std::net::SocketAddr::new(client, p);
                netnat::engine::service::server_index(c, 2) == i
            })
            .unwrap();
        let out = t.cli.run(&[
            PYTHON,
            "-c",
            BIG_DATAGRAMS,
            fam.client(),
            &sport.to_string(),
            app,
            "53",
            "1400",
            "10",
        ]);
        assert_eq!(
            out.stdout.trim(),
            "ok 10",
            "{name}: long datagrams to {server} from port {sport}\n{out}\n{}",
            netnat.proc.evidence()
        );
        let echoed = procs[2 * i + 1].stdout();
        assert!(
            echoed.contains(&format!("peer={} {sport} len=1400", fam.client())),
            "{name}: {server} did not echo the flow from {sport}: {echoed}"
        );
    }
    // status --json counts each server: the TCP service's 300 connections split as the
    // servers' logs say, each packet at its server.
    let status = netnat.status_json();
    let tcp = "services.0.servers";
    assert_eq!(
        status.at(&format!("{tcp}.0.addr")).and_then(|v| v.as_str()),
        Some(first)
    );
    assert_eq!(
        status.at(&format!("{tcp}.1.addr")).and_then(|v| v.as_str()),
        Some(second)
    );
    for (i, log) in seen.iter().enumerate() {
        let n = status.n(&format!("{tcp}.{i}.new_connections"));
        assert_eq!(n, log.len() as u64, "{name}: server {i} in {status}");
        assert!(
            status.n(&format!("{tcp}.{i}.packets")) >= 4 * n,
            "{name}: {status}"
        );
    }
    assert_eq!(
        status.n("services.0.new_connections"),
        300,
        "{name}: {status}"
    );
    // The UDP service: each server got one flow of 10 datagrams and their 10 echoes.
    for i in 0..2 {
        assert_eq!(
            status.n(&format!("services.1.servers.{i}.new_connections")),
            1
        );
        assert_eq!(status.n(&format!("services.1.servers.{i}.packets")), 20);
    }
}

/// A range onto one actual port (with `header-only off`, which it needs): every apparent port
/// reaches the one port, and the replies of each flow leave from the port it came to (the flow
/// memory), also a download's.
fn many_to_one(name: &str, fam: Family) {
    require_root(name);
    let t = Topology::with_prefix("nfw");
    let server = fam.server();
    let config = format!(
        "header-only off\n\
         service pub0 port * 6000-6009 UDP {server} 7000\n\
         service pub0 port * 8000-8009 TCP {server} 9000\n\
         queues 1\n"
    );
    let udp_log = t.dir.file("udp.log");
    let _udp = t.spawn(
        &t.srv,
        "udp-7000",
        &[
            PYTHON,
            &script("udp_server.py"),
            server,
            "7000",
            udp_log.to_str().unwrap(),
            "120",
        ],
    );
    let dir = t.dir.file("www");
    fs::create_dir_all(&dir).unwrap();
    let file = random_file(&t, "www/blob", 1 << 20);
    let _www = t.spawn(
        &t.srv,
        "www-9000",
        &[
            PYTHON,
            "-m",
            "http.server",
            "--bind",
            server,
            "--directory",
            dir.to_str().unwrap(),
            "9000",
        ],
    );
    t.srv.wait_listening("udp", 7000, Duration::from_secs(10));
    t.srv.wait_listening("tcp", 9000, Duration::from_secs(10));
    let netnat = start(&t, &config);
    let app = fam.router_pub();
    for port in ["6003", "6007", "6000"] {
        let out = t.cli.run(&[
            PYTHON,
            &script("udp_client.py"),
            app,
            port,
            "hello-many",
            "2",
            "3",
        ]);
        let want = format!("from={app} {port} data=peer={} ", fam.client());
        assert!(
            out.stdout.contains(&want),
            "{name}: {want} missing\n{out}\n{}",
            netnat.proc.evidence()
        );
    }
    for port in [8002u16, 8009] {
        let got = t.dir.file(&format!("got-{port}"));
        let out = t.cli.run(&[
            "curl",
            "-sS",
            "-g",
            "--noproxy",
            "*",
            "--max-time",
            "30",
            "-w",
            "REMOTE %{remote_ip} %{remote_port}\n",
            "-o",
            got.to_str().unwrap(),
            &format!("http://{}/blob", fam.hostport(app, port)),
        ]);
        assert!(
            out.success(),
            "{name}: download from {port}\n{out}\n{}",
            netnat.proc.evidence()
        );
        assert!(
            out.stdout.contains(&format!("REMOTE {app} {port}")),
            "{name}: {out}"
        );
        assert_eq!(
            sha256(&got),
            sha256(&file),
            "{name}: the download from {port} differs"
        );
    }
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_many_to_one_v4() {
    many_to_one("nfw_many_to_one_v4", Family::V4);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_many_to_one_v6() {
    many_to_one("nfw_many_to_one_v6", Family::V6);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_servers_v4() {
    servers("nfw_servers_v4", Family::V4);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_servers_v6() {
    servers("nfw_servers_v6", Family::V6);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_range_v4() {
    range("nfw_range_v4", Family::V4);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_range_v6() {
    range("nfw_range_v6", Family::V6);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_from_v4() {
    from("nfw_from_v4", Family::V4);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn nfw_from_v6() {
    from("nfw_from_v6", Family::V6);
}
