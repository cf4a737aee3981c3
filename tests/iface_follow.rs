//! `*` follows the interface: when the router's public address changes (as PPP or DHCP would
//! change it), new connections to the new address are proxied within about a second, replies
//! carry the new address, the old address no longer serves, and netnat does not restart.

mod common;

use std::time::{Duration, Instant};

use common::Family;
use common::scenario::{HTTP, Netnat, Servers, UDP};
use common::{PYTHON, Topology, require_root, script};

fn curl(t: &Topology, addr: &str, max_time_s: &str) -> common::CmdOutput {
    let url = format!("http://{addr}:{}/probe", HTTP.app_port);
    t.cli.run(&[
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        max_time_s,
        "-w",
        "\nREMOTE %{remote_ip} %{remote_port}\n",
        &url,
    ])
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn star_follows_a_renumbered_public_address_without_restart() {
    if !require_root("star_follows_a_renumbered_public_address_without_restart") {
        return;
    }
    let t = Topology::new();
    let _servers = Servers::start(&t, Family::V4);
    let config = format!(
        "service pub0 port * {} TCP 192.168.77.10 {}\nservice pub0 port * {} UDP 192.168.77.10 {}\n",
        HTTP.app_port, HTTP.act_port, UDP.app_port, UDP.act_port
    );
    let mut netnat = Netnat::start(&t, &config, "netnat").expect("netnat ready");
    let pid = netnat.proc.pid();

    let before = curl(&t, "10.99.1.1", "5");
    assert!(
        before.success(),
        "old address before the change: {before:?}"
    );
    assert!(
        before.stdout.contains("REMOTE 10.99.1.1 8080"),
        "{}",
        before.stdout
    );

    // Renumbering: the old address goes (with its secondary), a new one comes.
    t.rtr
        .must(&["ip", "addr", "del", "10.99.1.1/24", "dev", "pub0"]);
    t.rtr
        .must(&["ip", "addr", "add", "10.99.1.5/24", "dev", "pub0"]);
    let changed = Instant::now();

    // Bounded: at most 50 tries of at most 1 s each, and 10 s in all.
    let mut served = None;
    for _ in 0..50 {
        let out = curl(&t, "10.99.1.5", "1");
        if out.success() {
            served = Some((changed.elapsed(), out));
            break;
        }
        if changed.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after, out) = served
        .unwrap_or_else(|| panic!("the new address never served\n{}", netnat.proc.evidence()));
    eprintln!(
        "new address served {} ms after the change",
        after.as_millis()
    );
    assert!(
        after < Duration::from_secs(2),
        "took {after:?}\n{}",
        netnat.proc.evidence()
    );
    assert!(
        out.stdout.contains("REMOTE 10.99.1.5 8080"),
        "replies carry the new address: {}",
        out.stdout
    );

    let udp = t.cli.run(&[
        PYTHON,
        &script("udp_client.py"),
        "10.99.1.5",
        &UDP.app_port.to_string(),
        "renumbered",
        "2",
        "3",
    ]);
    assert!(
        udp.stdout
            .contains(&format!("from=10.99.1.5 {}", UDP.app_port)),
        "UDP reply from the new apparent endpoint: {udp:?}"
    );

    let old = curl(&t, "10.99.1.1", "2");
    assert!(
        !old.success(),
        "the old address must not serve any more: {old:?}"
    );

    assert!(
        netnat.proc.try_status().is_none(),
        "netnat is still running"
    );
    assert_eq!(netnat.proc.pid(), pid, "same process, no restart");
    let log = netnat.proc.stderr();
    // One change (10.99.1.1 -> 10.99.1.5) or two (-> no IPv4 -> 10.99.1.5), as rtnetlink reports.
    assert!(
        log.contains("pub0: 10.99.1.1 -> 10.99.1.5")
            || log.contains("pub0: (no IPv4) -> 10.99.1.5"),
        "the change is logged:\n{log}"
    );
    assert_eq!(
        netnat
            .terminate(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn star_service_waits_for_its_interface_and_starts_when_it_appears() {
    if !require_root("star_service_waits_for_its_interface_and_starts_when_it_appears") {
        return;
    }
    let t = Topology::new();
    let _servers = Servers::start(&t, Family::V4);
    // The public interface is renamed away: at start-up `pub0` does not exist.
    t.rtr.must(&["ip", "link", "set", "pub0", "down"]);
    t.rtr.must(&["ip", "link", "set", "pub0", "name", "wan9"]);
    let config = format!(
        "service pub0 port * {} TCP 192.168.77.10 {}\n",
        HTTP.app_port, HTTP.act_port
    );
    let mut netnat =
        Netnat::start(&t, &config, "netnat").expect("netnat starts with its interface absent");
    let log = netnat.proc.stderr();
    assert!(
        log.contains("waits for its interface"),
        "reported at start-up:\n{log}"
    );

    // The interface appears (renamed back, as a PPP link comes up) with its address.
    t.rtr.must(&["ip", "link", "set", "wan9", "name", "pub0"]);
    t.rtr.must(&["ip", "link", "set", "pub0", "up"]);
    let appeared = Instant::now();
    let mut ok = false;
    for _ in 0..50 {
        if curl(&t, "10.99.1.1", "1").success() {
            ok = true;
            break;
        }
        if appeared.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "the service never started\n{}", netnat.proc.evidence());
    eprintln!(
        "service started {} ms after its interface appeared",
        appeared.elapsed().as_millis()
    );
    assert!(
        netnat.proc.stderr().contains("interface change: pub0"),
        "{}",
        netnat.proc.stderr()
    );
    assert_eq!(
        netnat
            .terminate(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}
