//! Kernel tests of reading offload sets back (`netnat::nft::dump`): a set with per-element
//! counters filled by a rule from real traffic, big sets read whole, absent sets, refusals.
//! Each test loads its table with `nft -f` in a network namespace of its own (role `nod…`,
//! deleted on drop); the dumps run in a thread that has joined it. The host's namespace is
//! never touched.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Ns, require_root};
use netnat::nft::NftError;
use netnat::nft::dump::{
    COUNT_KEY_LEN_V6, CounterDeltas, DUMP_DEADLINE, count_elements, decode_count_key, set_elements,
};

const PORT: u16 = 5555;

/// Table `inet netnat` as offload will have it, cut down to what these tests need: the
/// counted sets a rule fills from UDP traffic to [`PORT`] (IPv4 and IPv6), a counted set and
/// a plain one for big fills.
fn ruleset() -> String {
    let counted = |addr: &str| {
        format!(
            "type iface_index . {addr} . inet_proto . inet_service\n\t\tsize 65536\n\t\t\
             flags dynamic,timeout\n\t\ttimeout 10m\n\t\tcounter"
        )
    };
    let (v4, v6) = (counted("ipv4_addr"), counted("ipv6_addr"));
    format!(
        "table inet netnat {{\n\
         \tset count_in4 {{\n\t\t{v4}\n\t}}\n\
         \tset count_in6 {{\n\t\t{v6}\n\t}}\n\
         \tset count_out4 {{\n\t\t{v4}\n\t}}\n\
         \tset flows_in4 {{\n\t\ttype ipv4_addr\n\t\tsize 65536\n\t}}\n\
         \tchain out {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\tudp dport {PORT} update @count_in4 {{ meta oif . ip daddr . meta l4proto . udp dport }}\n\
         \t\tudp dport {PORT} update @count_in6 {{ meta oif . ip6 daddr . meta l4proto . udp dport }}\n\
         \t}}\n\
         }}\n"
    )
}

fn load(ns: &Ns, text: &str) {
    let out = ns.nft_file(text, false);
    assert!(out.success(), "nft -f failed\n{out}");
}

/// Sends one datagram of each payload size to 127.0.0.1:[`PORT`]; see [`send_udp_to`].
fn send_udp(sizes: &[usize]) -> u64 {
    send_udp_to(IpAddr::V4(Ipv4Addr::LOCALHOST), sizes)
}

/// Sends one datagram of each payload size to `to`:[`PORT`] and waits (bounded) until a
/// receiver there has them all, so that every one passed the output hook. Runs inside the
/// namespace. Returns the IP lengths summed: 20 (IPv4) or 40 (IPv6) + 8 + payload each.
fn send_udp_to(to: IpAddr, sizes: &[usize]) -> u64 {
    let rx = UdpSocket::bind((to, PORT)).expect("bind receiver");
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = UdpSocket::bind((to, 0)).expect("bind sender");
    let mut buf = vec![0u8; 2048];
    for &n in sizes {
        let payload = vec![0x5a; n];
        assert_eq!(tx.send_to(&payload, (to, PORT)).unwrap(), n);
    }
    for (i, &n) in sizes.iter().enumerate() {
        let got = rx
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {} not received: {e}", sizes.len()));
        assert_eq!(got, n, "datagram {i} arrived whole and in order");
    }
    let headers = if to.is_ipv4() { 20 + 8 } else { 40 + 8 };
    sizes.iter().map(|n| headers + *n as u64).sum()
}

/// The counter nft itself lists for the one element of `set`: (packets, bytes).
fn nft_counter(ns: &Ns, set: &str) -> (u64, u64) {
    let listed = ns.nft_ok(&["list", "set", "inet", "netnat", set]);
    let words: Vec<&str> = listed.split_whitespace().collect();
    let after = |w: &str| -> u64 {
        let i = words
            .iter()
            .position(|x| *x == w)
            .unwrap_or_else(|| panic!("no {w} in\n{listed}"));
        words[i + 1].trim_end_matches([',', '}']).parse().unwrap()
    };
    (after("packets"), after("bytes"))
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn a_rule_counted_flow_reads_back_with_its_exact_counter() {
    if !require_root("a_rule_counted_flow_reads_back_with_its_exact_counter") {
        return;
    }
    let ns = Ns::new("nodctr");
    load(&ns, &ruleset());
    let lo = ns.ifindex("lo");
    let first: Vec<usize> = (0..25).map(|i| 10 + 37 * i).collect();
    let more: Vec<usize> = (0..7).map(|i| 1000 + 3 * i).collect();
    let (bytes, elems, counted, bytes2, elems2) = ns.enter(|| {
        let before = set_elements("netnat", "count_in4").expect("dump of the empty set");
        assert_eq!(before, vec![], "nothing sent yet");
        let bytes = send_udp(&first);
        let elems = set_elements("netnat", "count_in4").expect("dump");
        let counted = count_elements("netnat", "count_in4").expect("count");
        let bytes2 = send_udp(&more);
        let elems2 = set_elements("netnat", "count_in4").expect("second dump");
        (bytes, elems, counted, bytes2, elems2)
    });
    assert_eq!(elems.len(), 1, "one flow, one element: {elems:?}");
    assert_eq!(counted, 1);
    let e = &elems[0];
    assert_eq!(
        decode_count_key(false, &e.key),
        Some((lo, IpAddr::V4(Ipv4Addr::LOCALHOST), 17, PORT)),
        "key {:?}",
        e.key
    );
    assert_eq!(e.counter, Some((first.len() as u64, bytes)));
    // nft reads the same counter (an oracle independent of netnat's decoding).
    assert_eq!(elems2.len(), 1);
    assert_eq!(elems2[0].key, e.key);
    let total = (first.len() as u64 + more.len() as u64, bytes + bytes2);
    assert_eq!(elems2[0].counter, Some(total));
    assert_eq!(nft_counter(&ns, "count_in4"), total);

    // The deltas: the first reading is the whole counter, the second what came since.
    let mut d = CounterDeltas::new();
    assert_eq!(
        d.observe("count_in4", &elems),
        vec![(e.key.clone(), first.len() as u64, bytes)]
    );
    assert_eq!(
        d.observe("count_in4", &elems2),
        vec![(e.key.clone(), more.len() as u64, bytes2)]
    );
    assert!(d.observe("count_in4", &elems2).is_empty());

    // Deleted and created again by the next packet: the counter starts over, and the delta
    // is the new element's whole counter.
    ns.nft_ok(&["flush", "set", "inet", "netnat", "count_in4"]);
    let (bytes3, elems3) = ns.enter(|| {
        let b = send_udp(&[64, 64]);
        (b, set_elements("netnat", "count_in4").expect("dump"))
    });
    assert_eq!(elems3.len(), 1);
    assert_eq!(elems3[0].counter, Some((2, bytes3)));
    assert_eq!(
        d.observe("count_in4", &elems3),
        vec![(e.key.clone(), 2, bytes3)]
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn an_ipv6_flow_reads_back_in_the_28_byte_layout() {
    if !require_root("an_ipv6_flow_reads_back_in_the_28_byte_layout") {
        return;
    }
    let ns = Ns::new("nodsix");
    load(&ns, &ruleset());
    let lo = ns.ifindex("lo");
    let sizes: Vec<usize> = (0..9).map(|i| 1 + 101 * i).collect();
    let (bytes, v6, v4) = ns.enter(|| {
        let bytes = send_udp_to(IpAddr::V6(Ipv6Addr::LOCALHOST), &sizes);
        (
            bytes,
            set_elements("netnat", "count_in6").expect("dump v6"),
            set_elements("netnat", "count_in4").expect("dump v4"),
        )
    });
    assert_eq!(v4, vec![], "IPv6 traffic fills the IPv6 set only");
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert_eq!(v6[0].key.len(), COUNT_KEY_LEN_V6);
    assert_eq!(
        decode_count_key(true, &v6[0].key),
        Some((lo, IpAddr::V6(Ipv6Addr::LOCALHOST), 17, PORT)),
        "key {:?}",
        v6[0].key
    );
    assert_eq!(v6[0].counter, Some((sizes.len() as u64, bytes)));
    assert_eq!(nft_counter(&ns, "count_in6"), (sizes.len() as u64, bytes));
}

/// `n` distinct IPv4 addresses 10.x.y.z.
fn addrs(n: u32) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::from(0x0a00_0000 + i)).collect()
}

/// `add element inet netnat <set> { … }` of `items`, one statement.
fn add_elements(set: &str, items: impl Iterator<Item = String>) -> String {
    let mut s = format!("add element inet netnat {set} {{\n");
    for it in items {
        writeln!(s, "\t{it},").unwrap();
    }
    s.push_str("}\n");
    s
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn sets_of_65536_elements_are_read_whole() {
    if !require_root("sets_of_65536_elements_are_read_whole") {
        return;
    }
    const N: u32 = 65_536;
    let ns = Ns::new("nodbig");
    load(&ns, &ruleset());
    let all = addrs(N);
    load(
        &ns,
        &add_elements("flows_in4", all.iter().map(|a| a.to_string())),
    );
    load(
        &ns,
        &add_elements(
            "count_out4",
            all.iter().map(|a| format!("\"lo\" . {a} . udp . 4000")),
        ),
    );
    let lo = ns.ifindex("lo");
    let (flows, counted, plain, timings) = ns.enter(|| {
        let t = Instant::now();
        let flows = count_elements("netnat", "flows_in4").expect("count flows");
        let t1 = t.elapsed();
        let t = Instant::now();
        let counted = set_elements("netnat", "count_out4").expect("dump counted");
        let t2 = t.elapsed();
        let plain = set_elements("netnat", "flows_in4").expect("dump flows");
        (flows, counted, plain, (t1, t2))
    });
    eprintln!(
        "count of {N} plain elements: {:?}; dump of {N} counted elements: {:?}",
        timings.0, timings.1
    );
    assert!(timings.1 < DUMP_DEADLINE);
    assert_eq!(flows, N as usize);

    // Every address exactly once, as its 4 key bytes, without a counter.
    assert_eq!(plain.len(), N as usize);
    assert!(plain.iter().all(|e| e.counter.is_none()));
    let keys: BTreeSet<Vec<u8>> = plain.iter().map(|e| e.key.clone()).collect();
    let want: BTreeSet<Vec<u8>> = all.iter().map(|a| a.octets().to_vec()).collect();
    assert_eq!(keys, want);

    // The counted set: every element decodes, has a counter at zero, and all are there.
    assert_eq!(counted.len(), N as usize);
    let mut seen = BTreeSet::new();
    for e in &counted {
        let (ifindex, addr, proto, port) =
            decode_count_key(false, &e.key).unwrap_or_else(|| panic!("key {:?}", e.key));
        assert_eq!((ifindex, proto, port), (lo, 17, 4000));
        assert_eq!(e.counter, Some((0, 0)), "{addr}");
        assert!(seen.insert(addr), "{addr} twice");
    }
    let want: BTreeSet<IpAddr> = all.iter().map(|a| IpAddr::V4(*a)).collect();
    assert_eq!(seen, want);
    // Nothing counted yet: no deltas, but every key remembered.
    let mut d = CounterDeltas::new();
    assert!(d.observe("count_out4", &counted).is_empty());
    assert_eq!(d.tracked("count_out4"), N as usize);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn absent_sets_and_tables_read_as_empty() {
    if !require_root("absent_sets_and_tables_read_as_empty") {
        return;
    }
    let ns = Ns::new("nodabsent");
    let (no_table, no_table_count) = ns.enter(|| {
        (
            set_elements("netnat", "count_in4").expect("no table"),
            count_elements("netnat", "flows_in4").expect("no table"),
        )
    });
    assert_eq!((no_table, no_table_count), (vec![], 0));
    load(&ns, &ruleset());
    let (no_set, empty, longest) = ns.enter(|| {
        (
            set_elements("netnat", "count_out6").expect("no set"),
            count_elements("netnat", "flows_in4").expect("empty set"),
            // The longest name the kernel takes: asked for, and absent.
            set_elements("netnat", &"x".repeat(255)).expect("long name"),
        )
    });
    assert_eq!((no_set, empty, longest), (vec![], 0, vec![]));
}

/// Capabilities are per thread: only the calling thread loses CAP_NET_ADMIN.
fn drop_cap_net_admin() {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a version-3 header and the two data words it takes; pid 0
    // is the calling thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        data[0].permitted &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()), 0);
    }
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn a_refused_dump_is_an_error_naming_the_set() {
    if !require_root("a_refused_dump_is_an_error_naming_the_set") {
        return;
    }
    let ns = Ns::new("nodperm");
    load(&ns, &ruleset());
    let err = ns.enter(|| {
        drop_cap_net_admin();
        set_elements("netnat", "count_in4").unwrap_err()
    });
    match &err {
        NftError::Kernel { errno, .. } => assert_eq!(*errno, libc::EPERM, "{err}"),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("dumping set count_in4 of table inet netnat"),
        "{text}"
    );
    // Bad names never reach the kernel.
    let err = ns.enter(|| count_elements("netnat", "flows\0in4").unwrap_err());
    assert!(err.to_string().contains("NUL"), "{err}");
}

/// A set that changes while it is read: the packet path inserts 1-second elements (UDP to
/// ports 10000 and up, at a bounded rate) into the counted set that also holds 20,000
/// long-lived elements. The kernel's dump of such a set repeats and skips elements (see
/// netnat::nft::dump); what must hold all the same: every read ends in time, each key comes
/// once with a counter, no more keys than the set can hold, and the long-lived keys seen
/// are among those loaded, with their port and a zero counter.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn a_set_changing_under_the_dump_reads_each_key_once_and_in_time() {
    if !require_root("a_set_changing_under_the_dump_reads_each_key_once_and_in_time") {
        return;
    }
    let ns = Ns::new("nodchurn");
    load(&ns, &ruleset());
    ns.nft_ok(&[
        "add",
        "rule",
        "inet",
        "netnat",
        "out",
        "udp",
        "dport",
        ">=",
        "10000",
        "update",
        "@count_out4",
        "{",
        "meta",
        "oif",
        ".",
        "ip",
        "daddr",
        ".",
        "meta",
        "l4proto",
        ".",
        "udp",
        "dport",
        "timeout",
        "1s",
        "}",
    ]);
    let stable = addrs(20_000);
    load(
        &ns,
        &add_elements(
            "count_out4",
            stable.iter().map(|a| format!("\"lo\" . {a} . udp . 4000")),
        ),
    );
    let stable: BTreeSet<IpAddr> = stable.into_iter().map(IpAddr::V4).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    // About 20,000 datagrams a second for at most 20 s, to 50,000 ports in turn.
    let sender = ns.thread(move || {
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind sender");
        let start = Instant::now();
        let mut sent = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(20)
        {
            for _ in 0..200 {
                let port = 10_000 + (sent % 50_000) as u16;
                if tx.send_to(&[1], (Ipv4Addr::LOCALHOST, port)).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(1));
    let reads = ns.enter(|| {
        (0..4)
            .map(|_| {
                let t = Instant::now();
                let elems = set_elements("netnat", "count_out4");
                let count = count_elements("netnat", "count_out4");
                (elems, count, t.elapsed())
            })
            .collect::<Vec<_>>()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    assert!(sent > 10_000, "the set did change: {sent} datagrams");
    let lo = ns.ifindex("lo");
    for (i, (elems, count, took)) in reads.into_iter().enumerate() {
        let elems = elems.unwrap_or_else(|e| panic!("read {i}: {e}"));
        let count = count.unwrap_or_else(|e| panic!("count {i}: {e}"));
        let mut keys = BTreeSet::new();
        let mut stable_seen = 0;
        for e in &elems {
            assert!(
                keys.insert(e.key.clone()),
                "read {i}: key {:?} twice",
                e.key
            );
            let (ifindex, addr, proto, port) =
                decode_count_key(false, &e.key).unwrap_or_else(|| panic!("key {:?}", e.key));
            assert_eq!((ifindex, proto), (lo, 17));
            let (packets, bytes) = e.counter.expect("every element is counted");
            if port == 4000 {
                assert!(stable.contains(&addr), "read {i}: {addr} was never loaded");
                assert_eq!((packets, bytes), (0, 0), "{addr}");
                stable_seen += 1;
            } else {
                assert!(port >= 10_000 && addr == IpAddr::V4(Ipv4Addr::LOCALHOST));
                assert_eq!(bytes, packets * 29, "one-byte datagrams");
            }
        }
        assert!(elems.len() <= 65_536 && count <= 65_536, "read {i}");
        eprintln!(
            "read {i}: {} keys ({stable_seen} of the 20,000 long-lived), count {count}, {took:?}",
            elems.len()
        );
    }
}
