//! Kernel tests of `netnat::iface`: each test creates its own network namespace
//! (a [`common::Ns`], deleted on drop, also when the test fails), runs its body in a spawned
//! thread that has joined that namespace with setns(CLONE_NEWNET) (the namespace is per
//! thread, so sockets opened there see only the test's interfaces), and changes interfaces
//! only with `ip -n <namespace>` / `ip netns exec <namespace>`. The host's own namespace is
//! never changed.
//!
//! Needs root and iproute2.

mod common;

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{Ns, require_root};
use netnat::engine::service::Interfaces;
use netnat::iface::msg::{AddrMsg, Body, IFA_F_SECONDARY, IFA_F_TENTATIVE, LinkMsg};
use netnat::iface::{ChangeKind, Event, Snapshot, Watcher};

/// The bound the brief sets for noticing a change.
const NOTICE: Duration = Duration::from_secs(1);

/// A fresh namespace for `test`, after the root guard.
fn netns(test: &str) -> Ns {
    require_root(test);
    Ns::new("iface")
}

/// Waits until the watcher is readable or the deadline passes.
fn readable(w: &Watcher, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut p = libc::pollfd {
        fd: w.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) > 0 }
}

/// Drains until `want` matches an event, within NOTICE. Returns whether `drain` reported a
/// relevant change meanwhile, and the events seen.
fn wait_for(w: &mut Watcher, what: &str, want: impl Fn(&Event) -> bool) -> (bool, Vec<Event>) {
    let deadline = Instant::now() + NOTICE;
    let mut events = Vec::new();
    let mut relevant = false;
    loop {
        relevant |= w.drain_with(|e| events.push(e.clone())).expect("drain");
        if events.iter().any(&want) {
            return (relevant, events);
        }
        if !readable(w, deadline) {
            panic!("no {what} within {NOTICE:?}; saw {events:#?}");
        }
    }
}

/// Drains until nothing arrives for `quiet`; returns whether anything relevant came.
fn settle(w: &mut Watcher, quiet: Duration) -> bool {
    let mut relevant = false;
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        relevant |= w.drain().expect("drain");
        if !readable(w, Instant::now() + quiet) {
            return relevant;
        }
        assert!(Instant::now() < limit, "notifications never stopped");
    }
}

fn addr_event(e: &Event, new: bool, ip: &str) -> bool {
    let ip: IpAddr = ip.parse().unwrap();
    matches!(e, Event::Message(m) if matches!(&m.body,
        Body::Addr(a) if a.new == new && a.own_address() == Some(ip)))
}

fn link_event(e: &Event, pred: impl Fn(&LinkMsg) -> bool) -> bool {
    matches!(e, Event::Message(m) if matches!(&m.body, Body::Link(l) if pred(l)))
}

fn addr_of(e: &Event) -> Option<&AddrMsg> {
    match e {
        Event::Message(m) => match &m.body {
            Body::Addr(a) => Some(a),
            _ => None,
        },
        Event::Lost => None,
    }
}

fn addr(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn snapshot_shows_an_interface_with_its_index_and_address() {
    let ns = &netns("snapshot_shows_an_interface_with_its_index_and_address");
    ns.enter(|| {
        ns.veth("v0", "v1");
        ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "v0"]);
        let snap = Snapshot::read().expect("snapshot");
        assert_eq!(snap.index("v0"), Some(ns.ifindex("v0")), "{snap:?}");
        assert_eq!(snap.index("v1"), Some(ns.ifindex("v1")));
        assert_eq!(snap.address("v0", false), addr("10.77.0.1"));
        assert_eq!(snap.address("v1", false), None);
        assert_eq!(snap.is_up("v0"), Some(true));
        // The namespace's own loopback, and nothing of the host's interfaces.
        assert_eq!(snap.address("lo", false), addr("127.0.0.1"));
        assert_eq!(snap.address("lo", true), addr("::1"));
        let mut names: Vec<_> = snap.names().collect();
        names.sort();
        assert_eq!(names, ["lo", "v0", "v1"]);
        assert!(
            snap.describe("v0").starts_with("v0: index ")
                && snap.describe("v0").contains("IPv4 10.77.0.1"),
            "{}",
            snap.describe("v0")
        );
        assert_eq!(snap.describe("nope0"), "nope0: absent");
    });
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn watcher_sees_address_add_and_del_link_down_and_del() {
    let ns = &netns("watcher_sees_address_add_and_del_link_down_and_del");
    ns.enter(|| {
        // No IPv6 autoconfiguration: its late link-local notifications would blur the steps.
        ns.sysctl(&["net.ipv6.conf.default.disable_ipv6=1"]);
        let mut w = Watcher::open().expect("watcher");
        assert!(!w.drain().expect("drain"), "nothing happened yet");

        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        let (rel, _) = wait_for(&mut w, "new link", |e| {
            link_event(e, |l| l.new && l.name.as_deref() == Some("v0"))
        });
        assert!(rel, "a new link is relevant");
        ns.ip(&["link", "set", "v0", "up"]);
        ns.ip(&["link", "set", "v1", "up"]);
        settle(&mut w, Duration::from_millis(200));

        let t = Instant::now();
        ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "v0"]);
        let (rel, _) = wait_for(&mut w, "RTM_NEWADDR", |e| addr_event(e, true, "10.77.0.1"));
        assert!(rel && t.elapsed() < NOTICE);
        assert_eq!(
            Snapshot::read().unwrap().address("v0", false),
            addr("10.77.0.1")
        );

        ns.ip(&["addr", "del", "10.77.0.1/24", "dev", "v0"]);
        let (rel, _) = wait_for(&mut w, "RTM_DELADDR", |e| addr_event(e, false, "10.77.0.1"));
        assert!(rel);
        assert_eq!(Snapshot::read().unwrap().address("v0", false), None);

        ns.ip(&["link", "set", "v0", "down"]);
        let (rel, _) = wait_for(&mut w, "link down", |e| {
            link_event(e, |l| {
                l.new && l.name.as_deref() == Some("v0") && l.flags & libc::IFF_UP as u32 == 0
            })
        });
        assert!(rel, "down is relevant");
        assert_eq!(Snapshot::read().unwrap().is_up("v0"), Some(false));
        settle(&mut w, Duration::from_millis(100));

        ns.ip(&["link", "del", "v0"]);
        let (rel, _) = wait_for(&mut w, "RTM_DELLINK", |e| {
            link_event(e, |l| !l.new && l.name.as_deref() == Some("v0"))
        });
        assert!(rel);
        let snap = Snapshot::read().unwrap();
        assert_eq!(snap.index("v0"), None);
        assert_eq!(snap.index("v1"), None, "a veth pair goes as a whole");
        settle(&mut w, Duration::from_millis(100));
        assert!(!w.drain().unwrap(), "quiet once drained");
    });
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn watcher_ignores_link_changes_that_do_not_matter_and_sees_a_rename() {
    let ns = &netns("watcher_ignores_link_changes_that_do_not_matter_and_sees_a_rename");
    ns.enter(|| {
        ns.sysctl(&["net.ipv6.conf.default.disable_ipv6=1"]);
        let mut w = Watcher::open().expect("watcher");
        ns.veth("v0", "v1");
        assert!(settle(&mut w, Duration::from_millis(300)));

        // An MTU change sends RTM_NEWLINK, but name and state stay: no new snapshot needed.
        ns.ip(&["link", "set", "v0", "mtu", "1400"]);
        let (rel, _) = wait_for(&mut w, "RTM_NEWLINK for the MTU", |e| {
            link_event(e, |l| l.name.as_deref() == Some("v0"))
        });
        assert!(!rel, "an MTU change is not relevant");
        assert!(!settle(&mut w, Duration::from_millis(100)));

        ns.ip(&["link", "set", "v0", "down"]);
        settle(&mut w, Duration::from_millis(100));
        let before = Snapshot::read().unwrap();
        let index = before.index("v0").unwrap();
        ns.ip(&["link", "set", "v0", "name", "w0"]);
        let (rel, _) = wait_for(&mut w, "rename", |e| {
            link_event(e, |l| l.name.as_deref() == Some("w0"))
        });
        assert!(rel, "a rename is relevant");
        let after = Snapshot::read().unwrap();
        assert_eq!(after.index("v0"), None);
        assert_eq!(after.index("w0"), Some(index));
        let changes = before.diff(&after, &["v0", "w0"]);
        let lines: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "v0: gone".to_string(),
                format!("w0: appeared (index {index})"),
            ],
            "a new name is compared with a down interface without addresses"
        );
    });
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn primary_not_secondary_ipv4_and_promotion() {
    let ns = &netns("primary_not_secondary_ipv4_and_promotion");
    ns.enter(|| {
        ns.veth("v0", "v1");
        ns.sysctl(&["net.ipv4.conf.v0.promote_secondaries=1"]);
        let mut w = Watcher::open().expect("watcher");
        ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "v0"]);
        ns.ip(&["addr", "add", "10.77.0.2/24", "dev", "v0"]);
        let (_, events) = wait_for(&mut w, "secondary", |e| addr_event(e, true, "10.77.0.2"));
        let sec = events
            .iter()
            .filter_map(addr_of)
            .find(|a| a.local == addr("10.77.0.2"));
        assert!(
            sec.unwrap().flags & IFA_F_SECONDARY != 0,
            "the kernel flags the second address of a subnet as secondary"
        );
        // Another subnet: a primary too, but a later one.
        ns.ip(&["addr", "add", "10.78.0.1/24", "dev", "v0"]);
        let snap = Snapshot::read().unwrap();
        assert_eq!(snap.address("v0", false), addr("10.77.0.1"));

        // Deleting the primary promotes the secondary: `*` follows it.
        ns.ip(&["addr", "del", "10.77.0.1/24", "dev", "v0"]);
        let (rel, _) = wait_for(&mut w, "deletion", |e| addr_event(e, false, "10.77.0.1"));
        assert!(rel);
        let newer = Snapshot::read().unwrap();
        let now = newer.address("v0", false);
        assert!(
            now == addr("10.77.0.2") || now == addr("10.78.0.1"),
            "a remaining primary, not {now:?}"
        );
        let change = snap.diff(&newer, &["v0"]);
        assert_eq!(change.len(), 1, "{change:?}");
        assert_eq!(
            change[0].to_string(),
            format!("v0: 10.77.0.1 -> {}", now.unwrap())
        );

        // The promoted address lost its secondary flag: with the other subnet gone, it is `*`.
        ns.ip(&["addr", "flush", "dev", "v0", "to", "10.78.0.0/24"]);
        assert_eq!(
            Snapshot::read().unwrap().address("v0", false),
            addr("10.77.0.2")
        );
    });
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ipv6_nodad_counts_tentative_and_deprecated_do_not() {
    let ns = &netns("ipv6_nodad_counts_tentative_and_deprecated_do_not");
    ns.enter(|| {
        ns.veth("v0", "v1");
        // Slow DAD down so that "tentative" is seen for sure, then let it finish.
        ns.sysctl(&["net.ipv6.conf.v0.dad_transmits=2"]);
        let mut w = Watcher::open().expect("watcher");
        ns.ip(&["addr", "add", "2001:db8::6/64", "dev", "v0"]);
        let (_, events) = wait_for(&mut w, "tentative", |e| addr_event(e, true, "2001:db8::6"));
        let a = events
            .iter()
            .filter_map(addr_of)
            .find(|a| a.own_address() == addr("2001:db8::6"));
        assert!(a.unwrap().flags & IFA_F_TENTATIVE != 0, "{a:?}");
        let snap = Snapshot::read().unwrap();
        assert_eq!(
            snap.address("v0", true),
            None,
            "tentative: {}",
            snap.describe("v0")
        );

        ns.ip(&["addr", "add", "2001:db8::5/64", "dev", "v0", "nodad"]);
        ns.ip(&[
            "addr",
            "add",
            "2001:db8::7/64",
            "dev",
            "v0",
            "nodad",
            "preferred_lft",
            "0",
        ]);
        assert_eq!(
            Snapshot::read().unwrap().address("v0", true),
            addr("2001:db8::5")
        );

        // DAD finishing is announced (RTM_NEWADDR without the flag). ::6 was created first:
        // IPv6 has no primary, the oldest usable address is `*`.
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut done = false;
        while !done && Instant::now() < deadline {
            w.drain_with(|e| {
                if let Some(a) = addr_of(e) {
                    let six = a.own_address() == addr("2001:db8::6");
                    done |= six && a.new && a.flags & IFA_F_TENTATIVE == 0;
                }
            })
            .unwrap();
            readable(&w, Instant::now() + Duration::from_millis(200));
        }
        assert!(done, "DAD completion was announced");
        assert_eq!(
            Snapshot::read().unwrap().address("v0", true),
            addr("2001:db8::6")
        );
        ns.ip(&["addr", "del", "2001:db8::6/64", "dev", "v0"]);
        assert_eq!(
            Snapshot::read().unwrap().address("v0", true),
            addr("2001:db8::5")
        );
        // Left: the deprecated ::7 and the link-local address; neither counts.
        ns.ip(&["addr", "del", "2001:db8::5/64", "dev", "v0"]);
        let out = ns.ip(&["-6", "addr", "show", "dev", "v0"]);
        assert!(out.contains("fe80::"), "has a link-local address: {out}");
        assert_eq!(Snapshot::read().unwrap().address("v0", true), None, "{out}");
    });
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn point_to_point_reports_the_local_address_not_the_peer() {
    let ns = &netns("point_to_point_reports_the_local_address_not_the_peer");
    ns.enter(|| {
        // A tun device is point-to-point like ppp0 (no carrier without a process, which does
        // not matter for addresses).
        ns.ip(&["tuntap", "add", "mode", "tun", "name", "pt0"]);
        let mut w = Watcher::open().expect("watcher");
        ns.ip(&["addr", "add", "10.0.0.1", "peer", "10.0.0.2", "dev", "pt0"]);
        ns.ip(&[
            "addr",
            "add",
            "2001:db8::1",
            "peer",
            "2001:db8::2",
            "dev",
            "pt0",
            "nodad",
        ]);
        let (_, events) = wait_for(&mut w, "p2p", |e| addr_event(e, true, "10.0.0.1"));
        let a = events
            .iter()
            .filter_map(addr_of)
            .find(|a| a.local == addr("10.0.0.1"));
        assert_eq!(
            a.unwrap().address,
            addr("10.0.0.2"),
            "IFA_ADDRESS is the peer"
        );
        let snap = Snapshot::read().unwrap();
        assert_eq!(snap.address("pt0", false), addr("10.0.0.1"));
        assert_eq!(snap.address("pt0", true), addr("2001:db8::1"));
    });
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn recreated_interface_gets_a_new_index_and_is_followed_by_name() {
    let ns = &netns("recreated_interface_gets_a_new_index_and_is_followed_by_name");
    ns.enter(|| {
        ns.veth("v0", "v1");
        ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "v0"]);
        let first = Snapshot::read().unwrap();
        let old = first.index("v0").unwrap();
        let mut w = Watcher::open().expect("watcher");

        ns.ip(&["link", "del", "v0"]);
        wait_for(&mut w, "deletion", |e| {
            link_event(e, |l| !l.new && l.index == old)
        });
        let gone = Snapshot::read().unwrap();
        assert_eq!(gone.index("v0"), None);
        assert_eq!(first.diff(&gone, &["v0"])[0].to_string(), "v0: gone");

        ns.veth("v0", "v1");
        ns.ip(&["addr", "add", "10.77.0.5/24", "dev", "v0"]);
        let (rel, _) = wait_for(&mut w, "new address", |e| addr_event(e, true, "10.77.0.5"));
        assert!(rel);
        let again = Snapshot::read().unwrap();
        let new = again.index("v0").unwrap();
        assert_ne!(new, old, "a re-created interface has a new index");
        assert_eq!(new, ns.ifindex("v0"));
        assert_eq!(again.address("v0", false), addr("10.77.0.5"));
        let changes = first.diff(&again, &["v0", "v0"]);
        let kinds: Vec<_> = changes.iter().map(|c| c.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::Reindexed { old, new },
                ChangeKind::Address {
                    v6: false,
                    old: addr("10.77.0.1"),
                    new: addr("10.77.0.5")
                }
            ]
        );
        assert_eq!(changes[1].to_string(), "v0: 10.77.0.1 -> 10.77.0.5");
    });
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn overrun_is_reported_as_a_change_and_is_not_fatal() {
    let ns = &netns("overrun_is_reported_as_a_change_and_is_not_fatal");
    ns.enter(|| {
        ns.sysctl(&["net.ipv6.conf.default.disable_ipv6=1"]);
        ns.veth("v0", "v1");
        let mut w = Watcher::open().expect("watcher");
        // The kernel's minimum: a handful of notifications fill it.
        w.set_receive_buffer(0).expect("SO_RCVBUF");
        let batch: String = (1..=200)
            .map(|i| format!("addr add 10.79.{}.{}/32 dev v0\n", i / 250, i % 250 + 1))
            .collect();
        let path = std::env::temp_dir().join(format!("{}.batch", ns.name));
        std::fs::write(&path, batch).unwrap();
        ns.ip(&["-batch", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);

        let mut lost = false;
        let rel = w
            .drain_with(|e| lost |= *e == Event::Lost)
            .expect("ENOBUFS is not an error");
        assert!(rel && lost, "an overrun is reported");
        assert!(w.overruns() >= 1);
        // Afterwards the socket works on, and the snapshot has everything.
        settle(&mut w, Duration::from_millis(100));
        ns.ip(&["addr", "add", "10.80.0.1/24", "dev", "v1"]);
        wait_for(&mut w, "after the overrun", |e| {
            addr_event(e, true, "10.80.0.1")
        });
        assert_eq!(
            Snapshot::read().unwrap().address("v1", false),
            addr("10.80.0.1")
        );
    });
}
