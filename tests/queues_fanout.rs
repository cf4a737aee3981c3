//! Several queues, one thread each: the rules spread packets by CPU (`queue num A-B fanout`),
//! and every queue must be served, or the traffic of one CPU would stall while the others
//! flow. The test pins the client to each CPU in turn, so that its packets are queued on that
//! CPU's queue, and checks that every request succeeds and every queue saw packets.
//!
//! Needs root (namespaces) and at least two CPUs; in CI (`CI` set) a missing requirement
//! fails the test instead of skipping it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::scenario::{
    AppAddr, Case, HTTP, Netnat, Servers, Translator, http_get, queue_stats, udp_request,
};
use common::status::{self, Doc};
use common::{Family, Topology, require_root, run_bounded};

const BIN: &str = env!("CARGO_BIN_EXE_netnat");

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn every_queue_is_served_and_fanout_spreads_by_cpu() {
    if !require_root("every_queue_is_served_and_fanout_spreads_by_cpu") {
        return;
    }
    let n = cpus();
    assert!(
        n >= 2,
        "this test needs at least 2 CPUs to send packets through two queues (found {n})"
    );
    let queues = n.min(4);
    let t = Topology::new();
    let case = Case::new(Translator::Netnat, Family::V4, AppAddr::Fixed);
    let servers = Servers::start(&t, Family::V4);
    let config = format!("{}queue 4747\nqueues {queues}\n", case.netnat_config());
    let nn = Netnat::start(&t, &config, "netnat").unwrap_or_else(|e| panic!("{e}"));

    let nums: Vec<u32> = (0..queues as u32).map(|i| 4747 + i).collect();
    for &q in &nums {
        assert!(
            queue_stats(&t, q).is_some(),
            "queue {q} is not bound\n{}",
            nn.proc.evidence()
        );
    }
    let before: Vec<u64> = nums
        .iter()
        .map(|&q| queue_stats(&t, q).map_or(0, |s| s.id_sequence))
        .collect();

    // The client's packets are handled (prerouting included) on the CPU that sends them.
    for cpu in 0..queues {
        let cpu_s = cpu.to_string();
        for i in 0..5 {
            let url = format!("http://{}:{}/probe", case.app_ip(), HTTP.app_port);
            let out = t.cli.run(&[
                "taskset",
                "-c",
                &cpu_s,
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "5",
                &url,
            ]);
            assert!(
                out.success(),
                "HTTP request {i} from CPU {cpu} failed\n{out}\n{}",
                nn.proc.evidence()
            );
        }
        // Sanity of the helpers used above without pinning: one more of each kind.
        assert!(http_get(&t, case, 5).success());
        assert!(udp_request(&t, case, 2, 3).success());
    }

    for (i, &q) in nums.iter().enumerate() {
        let st = queue_stats(&t, q).expect("queue still bound");
        assert!(
            st.id_sequence > before[i],
            "queue {q} saw no packet although a client ran on CPU {i}: {st:?}\n{}",
            nn.proc.evidence()
        );
        assert_eq!(st.queue_dropped, 0, "queue {q} dropped packets: {st:?}");
    }

    // status sums the queues and names the range.
    let mut c = Command::new(BIN);
    c.args(["status", "--json", "--control"])
        .arg(t.dir.file("netnat.sock"));
    let status = run_bounded(c, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let doc = status::parse(&status.stdout);
    assert_eq!(doc.n("queue.num"), 4747, "{}", status.stdout);
    assert_eq!(doc.n("queue.count"), queues as u64, "{}", status.stdout);
    let received = doc.n("queue.received");
    let queued: u64 = nums
        .iter()
        .map(|&q| queue_stats(&t, q).map_or(0, |s| s.id_sequence))
        .sum();
    assert!(
        received > 0 && received <= queued,
        "status received {received}, the kernel queued {queued}"
    );
    drop(servers);
    drop(nn);
    for &q in &nums {
        assert!(
            queue_stats(&t, q).is_none(),
            "queue {q} still bound after netnat stopped"
        );
    }
}
