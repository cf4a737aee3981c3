//! `netnat check`'s look at the system: what a router needs for netnat's data path, read from
//! /proc and /sys without changing anything. It runs without privilege, but then says that
//! `netnat run` would be refused (no CAP_NET_ADMIN) and which facts it could not read.
//!
//! [`service_findings`] is shared with `netnat run`: what run logs about a resolved service
//! set (waiting, left out, cannot work) is exactly what check prints.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use crate::config::{AppAddr, Config, ServiceLine};
use crate::engine::service::{Lookup, ServiceTable};

/// How serious a finding is: an `Error` makes `netnat check` exit 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

/// One finding about the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: &'static str,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{tag:>7}  {}: {}", self.what, self.detail)
    }
}

/// Where the facts come from; tests point it at a directory laid out like / .
pub struct System<'a> {
    pub root: &'a Path,
}

impl Default for System<'_> {
    fn default() -> Self {
        System {
            root: Path::new("/"),
        }
    }
}

impl System<'_> {
    fn read(&self, path: &str) -> Option<String> {
        self.read_result(path).ok()
    }

    /// The file's text, or why it could not be read (a missing file and a refused one mean
    /// different things).
    fn read_result(&self, path: &str) -> std::io::Result<String> {
        let mut s = String::new();
        std::fs::File::open(self.root.join(path.trim_start_matches('/')))
            .and_then(|f| f.take(1 << 20).read_to_string(&mut s))?;
        Ok(s)
    }

    fn exists(&self, path: &str) -> bool {
        self.root.join(path.trim_start_matches('/')).exists()
    }

    /// The kernel's build configuration, where the system exposes it.
    fn kernel_config(&self) -> Option<String> {
        if let Some(c) = self.read_gz("/proc/config.gz") {
            return Some(c);
        }
        let release = self.read("/proc/sys/kernel/osrelease")?;
        self.read(&format!("/boot/config-{}", release.trim()))
    }

    fn read_gz(&self, path: &str) -> Option<String> {
        // /proc/config.gz is gzip; without a decompressor crate, ask zcat, which every Debian
        // system has. A missing zcat only means the fact is unknown.
        let full = self.root.join(path.trim_start_matches('/'));
        if !full.exists() {
            return None;
        }
        let out = std::process::Command::new("zcat")
            .arg(&full)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Every finding for `config` on `sys`.
pub fn check(config: &Config, sys: &System<'_>) -> Vec<Finding> {
    let mut out = vec![privilege(sys)];
    let has_v4 = config.services.iter().any(|l| !l.service.is_ipv6());
    let has_v6 = config.services.iter().any(|l| l.service.is_ipv6());
    if has_v4 || config.services.is_empty() {
        out.push(forwarding(
            sys,
            "/proc/sys/net/ipv4/ip_forward",
            "IPv4 forwarding",
        ));
    }
    if has_v6 {
        out.push(forwarding(
            sys,
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "IPv6 forwarding",
        ));
    }
    out.push(queue_support(sys));
    out.push(conntrack(sys));
    out.push(queue_free(
        sys,
        config.settings.queue,
        config.settings.queue_count(),
    ));
    out
}

/// CAP_NET_ADMIN, which `run` needs for netlink (rules) and the queue: without it, run fails.
fn privilege(sys: &System<'_>) -> Finding {
    const CAP_NET_ADMIN: u32 = 12;
    let what = "privilege";
    let eff = sys.read("/proc/self/status").and_then(|st| {
        st.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    match eff {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) != 0 => Finding {
            severity: Severity::Ok,
            what,
            detail: "CAP_NET_ADMIN".into(),
        },
        Some(_) => Finding {
            severity: Severity::Error,
            what,
            detail: "no CAP_NET_ADMIN: `netnat run` would be refused (run it as root); \
                     facts only root may read are reported as unknown"
                .into(),
        },
        None => Finding {
            severity: Severity::Warning,
            what,
            detail: "capabilities unreadable (/proc/self/status): whether `netnat run` may \
                     change rules and bind the queue is unknown"
                .into(),
        },
    }
}

fn forwarding(sys: &System<'_>, path: &str, what: &'static str) -> Finding {
    match sys.read(path).as_deref().map(str::trim) {
        Some("1") => Finding {
            severity: Severity::Ok,
            what,
            detail: "on".into(),
        },
        Some(v) => Finding {
            severity: Severity::Error,
            what,
            detail: format!("off ({path} is {v}): mapped packets cannot reach the actual servers"),
        },
        None => Finding {
            severity: Severity::Warning,
            what,
            detail: format!("{path} unreadable"),
        },
    }
}

fn config_has(config: &str, option: &str) -> bool {
    config
        .lines()
        .any(|l| l == format!("{option}=y") || l == format!("{option}=m"))
}

fn queue_support(sys: &System<'_>) -> Finding {
    let what = "NFQUEUE";
    let Some(kc) = sys.kernel_config() else {
        let detail = if sys.exists("/proc/net/netfilter/nfnetlink_queue") {
            "nfnetlink_queue present; queue expression unknown until `netnat run` tries the native \
             one and falls back to the xtables-compat NFQUEUE target"
        } else {
            "kernel configuration unreadable and nfnetlink_queue not loaded; `netnat run` will \
             try to load it"
        };
        return Finding {
            severity: Severity::Warning,
            what,
            detail: detail.into(),
        };
    };
    let native = config_has(&kc, "CONFIG_NFT_QUEUE");
    let compat = config_has(&kc, "CONFIG_NFT_COMPAT")
        && config_has(&kc, "CONFIG_NETFILTER_XT_TARGET_NFQUEUE");
    let nfq = config_has(&kc, "CONFIG_NETFILTER_NETLINK_QUEUE");
    match (nfq, native, compat) {
        (true, true, _) => Finding { severity: Severity::Ok, what, detail: "native nft queue expression".into() },
        (true, false, true) => Finding {
            severity: Severity::Ok,
            what,
            detail: "xtables-compat NFQUEUE target (the kernel has no native nft queue expression)".into(),
        },
        _ => Finding {
            severity: Severity::Error,
            what,
            detail: "the kernel has neither the nft queue expression nor the compat NFQUEUE target \
                     (CONFIG_NFT_QUEUE, or CONFIG_NFT_COMPAT with CONFIG_NETFILTER_XT_TARGET_NFQUEUE, \
                     and CONFIG_NETFILTER_NETLINK_QUEUE)"
                .into(),
        },
    }
}

fn conntrack(sys: &System<'_>) -> Finding {
    let what = "conntrack";
    if sys.exists("/proc/sys/net/netfilter/nf_conntrack_max") {
        Finding {
            severity: Severity::Ok,
            what,
            detail: "available; netnat's table activates it, so fragments are reassembled \
                     (priority -400) before netnat sees them"
                .into(),
        }
    } else {
        Finding {
            severity: Severity::Warning,
            what,
            detail: "nf_conntrack not loaded: fragmented datagrams cannot be reassembled and \
                     their later fragments carry no ports"
                .into(),
        }
    }
}

/// Whether another process already consumes the queue number (seen in the kernel's table).
fn queue_free(sys: &System<'_>, first: u16, count: u16) -> Finding {
    let what = "queue number";
    let last = first.saturating_add(count.max(1) - 1);
    let queues = if last == first {
        format!("queue {first}")
    } else {
        format!("queues {first}-{last}")
    };
    let path = "/proc/net/netfilter/nfnetlink_queue";
    let table = match sys.read_result(path) {
        Ok(t) => t,
        // Not loaded: nothing can be bound to any queue; run loads it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        // The file is root-only (0440): unreadable is not free.
        Err(e) => {
            return Finding {
                severity: Severity::Warning,
                what,
                detail: format!(
                    "{queues}: unknown, {path} unreadable ({e}); run `netnat check` as root to know"
                ),
            };
        }
    };
    // Columns: queue number, peer portid, queue total, copy mode, copy range, drops, ...
    let holder = table.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        let num = cols.next()?.parse::<u16>().ok()?;
        (first..=last)
            .contains(&num)
            .then(|| (num, cols.next().unwrap_or("?").to_owned()))
    });
    match holder {
        None => Finding {
            severity: Severity::Ok,
            what,
            detail: format!("{queues} free"),
        },
        Some((num, portid)) => Finding {
            severity: Severity::Error,
            what,
            detail: format!(
                "queue {num} (of {queues}) is bound by netlink port {portid} (a running netnat, \
                 or another NFQUEUE consumer): `netnat run` would be refused"
            ),
        },
    }
}

/// What `netnat run` reports about its services once they are resolved against the
/// interfaces (`table`), and what `netnat check` prints: services that wait for their
/// interface, services left out because another holds their endpoint (a `*` service and a
/// literal address of the interface on the same port), and services that are accepted but
/// cannot work. All are warnings: run starts without those services, as it always has, and so
/// check does not fail on them. `file` names the place of lines that came from it.
pub fn service_findings(lines: &[ServiceLine], table: &ServiceTable, file: &str) -> Vec<Finding> {
    let what = "service";
    let place = |l: &ServiceLine| {
        if l.line > 0 {
            format!("{file}:{}: ", l.line)
        } else {
            String::new()
        }
    };
    let warn = |detail: String| Finding {
        severity: Severity::Warning,
        what,
        detail,
    };
    let mut out = Vec::new();
    // Ids past the lines are draining services (removed ones, see the daemon), which are not
    // the configuration's to report.
    for &id in table.waiting().iter().filter(|&&id| id < lines.len()) {
        let l = &lines[id];
        out.push(warn(format!(
            "{}service waits for its interface or address: {}",
            place(l),
            l.service
        )));
    }
    for c in table.conflicts().iter().filter(|c| c.id < lines.len()) {
        let l = &lines[c.id];
        let endpoint = match c.direction {
            Lookup::Inbound => "apparent",
            Lookup::Reply => "actual",
        };
        out.push(warn(format!(
            "{}service left out, its {endpoint} endpoint is taken by {}: {}",
            place(l),
            lines[c.with].service,
            l.service
        )));
    }
    for (id, l) in lines.iter().enumerate() {
        let s = &l.service;
        let at = place(l);
        if s.act_addr.is_loopback() {
            out.push(warn(format!(
                "{at}the actual address {} is a loopback address: the kernel drops packets \
                 arriving on {} for it (martian destination), the service cannot work: {s}",
                s.act_addr, s.iface
            )));
        }
        if let AppAddr::Fixed(IpAddr::V6(a)) = s.app_addr
            && a.is_unicast_link_local()
        {
            out.push(warn(format!(
                "{at}the apparent address {a} is link-local: clients reach it from link-local \
                 sources, which the kernel does not forward to another link, the service \
                 cannot work: {s}"
            )));
        }
        // `*` is compared as it resolves now; a waiting one by its literal address only.
        let app = match (table.entry(id), s.app_addr) {
            (Some(e), _) => Some(e.app.ip()),
            (None, AppAddr::Fixed(a)) => Some(a),
            (None, AppAddr::Interface) => None,
        };
        if app == Some(s.act_addr) && s.app_port == s.act_port {
            out.push(warn(format!(
                "{at}the actual endpoint is the apparent one ({}): the service translates \
                 nothing: {s}",
                std::net::SocketAddr::new(s.act_addr, s.act_port)
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    struct Root(std::path::PathBuf);
    impl Root {
        fn new(files: &[(&str, &str)]) -> Root {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("netnat-prereq-{}-{n}", std::process::id()));
            for (path, text) in files {
                let p = dir.join(path.trim_start_matches('/'));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            std::fs::create_dir_all(&dir).unwrap();
            Root(dir)
        }
    }
    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn find<'a>(f: &'a [Finding], what: &str) -> &'a Finding {
        f.iter()
            .find(|x| x.what == what)
            .unwrap_or_else(|| panic!("no {what} in {f:?}"))
    }

    const KCONFIG: &str = "CONFIG_NETFILTER_NETLINK_QUEUE=y\n# CONFIG_NFT_QUEUE is not set\nCONFIG_NFT_COMPAT=y\nCONFIG_NETFILTER_XT_TARGET_NFQUEUE=y\n";

    #[test]
    fn a_ready_router() {
        let root = Root::new(&[
            (
                "/proc/self/status",
                "Name:\tnetnat\nCapEff:\t000001ffffffffff\n",
            ),
            ("/proc/sys/net/ipv4/ip_forward", "1\n"),
            ("/proc/sys/kernel/osrelease", "6.18.0\n"),
            ("/boot/config-6.18.0", KCONFIG),
            ("/proc/sys/net/netfilter/nf_conntrack_max", "65536\n"),
            (
                "/proc/net/netfilter/nfnetlink_queue",
                "   12  4242     0 2 65531     0     0        0  1\n",
            ),
        ]);
        let cfg = parse_config("service eth0 port * 80 TCP 10.0.0.1 80\n", "t").unwrap();
        let f = check(&cfg, &System { root: &root.0 });
        assert!(f.iter().all(|x| x.severity == Severity::Ok), "{f:#?}");
        assert!(find(&f, "NFQUEUE").detail.contains("compat"));
    }

    #[test]
    fn forwarding_off_and_a_busy_queue_are_errors() {
        let root = Root::new(&[
            ("/proc/sys/net/ipv4/ip_forward", "0\n"),
            ("/proc/sys/net/ipv6/conf/all/forwarding", "0\n"),
            (
                "/proc/net/netfilter/nfnetlink_queue",
                " 4747  999     0 2 65531     0     0        0  1\n",
            ),
        ]);
        let cfg = parse_config("service eth0 port * 80 TCP fd00::1 80\nqueue 4747\n", "t").unwrap();
        let f = check(&cfg, &System { root: &root.0 });
        assert_eq!(find(&f, "IPv6 forwarding").severity, Severity::Error);
        assert!(
            f.iter().all(|x| x.what != "IPv4 forwarding"),
            "no v4 service: {f:#?}"
        );
        let q = find(&f, "queue number");
        assert_eq!(q.severity, Severity::Error, "run would be refused");
        assert!(q.detail.contains("port 999"), "{q}");
        assert_eq!(find(&f, "conntrack").severity, Severity::Warning);
        assert_eq!(find(&f, "NFQUEUE").severity, Severity::Warning);
    }

    #[test]
    fn without_cap_net_admin_run_would_fail_and_an_unreadable_queue_table_is_unknown() {
        let root = Root::new(&[
            // CAP_NET_ADMIN is bit 12; everything but it.
            ("/proc/self/status", "CapEff:\t000001ffffffefff\n"),
            ("/proc/sys/net/ipv4/ip_forward", "1\n"),
        ]);
        // A directory where the file should be: it exists but cannot be read as one.
        std::fs::create_dir_all(root.0.join("proc/net/netfilter/nfnetlink_queue")).unwrap();
        let cfg = parse_config("service eth0 port * 80 TCP 10.0.0.1 80\n", "t").unwrap();
        let f = check(&cfg, &System { root: &root.0 });
        let p = find(&f, "privilege");
        assert_eq!(p.severity, Severity::Error, "{p}");
        assert!(p.detail.contains("no CAP_NET_ADMIN"), "{p}");
        let q = find(&f, "queue number");
        assert_eq!(q.severity, Severity::Warning, "{q}");
        assert!(q.detail.contains("unknown"), "{q}");
        assert!(!q.detail.contains("free"), "{q}");
        // Without the module nobody can hold the queue.
        let root = Root::new(&[("/proc/self/status", "CapEff:\t0000000000001000\n")]);
        let f = check(&cfg, &System { root: &root.0 });
        assert_eq!(find(&f, "privilege").severity, Severity::Ok);
        assert_eq!(find(&f, "queue number").detail, "queues 4747-4748 free");
    }

    /// Interfaces for [`service_findings`]: eth0 (index 2) with 10.0.0.1 and fd00::1.
    struct Eth0;
    impl crate::engine::service::Interfaces for Eth0 {
        fn index(&self, name: &str) -> Option<u32> {
            (name == "eth0").then_some(2)
        }
        fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
            (name == "eth0").then(|| {
                if v6 {
                    "fd00::1".parse().unwrap()
                } else {
                    "10.0.0.1".parse().unwrap()
                }
            })
        }
    }

    fn service_warnings(text: &str) -> Vec<String> {
        let cfg = parse_config(text, "t.conf").unwrap();
        let services: Vec<_> = cfg.services.iter().map(|l| l.service.clone()).collect();
        let table = ServiceTable::build(&services, &Eth0);
        service_findings(&cfg.services, &table, "t.conf")
            .into_iter()
            .map(|f| {
                assert_eq!(f.severity, Severity::Warning);
                f.detail
            })
            .collect()
    }

    #[test]
    fn services_that_run_leaves_out_or_that_cannot_work_are_named() {
        assert!(service_warnings("service eth0 port * 80 TCP 10.9.0.5 80\n").is_empty());
        let w = service_warnings(
            "service eth0 port * 80 TCP 10.9.0.5 80\nservice eth0 port 10.0.0.1 80 TCP 10.9.0.6 80\n",
        );
        assert_eq!(
            w,
            [
                "t.conf:2: service left out, its apparent endpoint is taken by \
              service eth0 port * 80 TCP 10.9.0.5 80 0x0000: \
              service eth0 port 10.0.0.1 80 TCP 10.9.0.6 80 0x0000"
            ]
        );
        let w = service_warnings("service eth0 port * 80 TCP 127.0.0.1 8080\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("t.conf:1: the actual address 127.0.0.1 is a loopback address"),
            "{w:?}"
        );
        let w = service_warnings("service eth0 port fe80::1 80 TCP fd00::5 80\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("the apparent address fe80::1 is link-local"),
            "{w:?}"
        );
        let w = service_warnings("service eth0 port 10.0.0.7 80 TCP 10.0.0.7 80\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("the actual endpoint is the apparent one (10.0.0.7:80)"),
            "{w:?}"
        );
        // `*` as it resolves now: 10.0.0.1.
        let w = service_warnings("service eth0 port * 80 TCP 10.0.0.1 80\n");
        assert!(w[0].contains("apparent one (10.0.0.1:80)"), "{w:?}");
        let w = service_warnings("service ppp9 port * 80 TCP 10.9.0.5 80\n");
        assert_eq!(
            w,
            ["t.conf:1: service waits for its interface or address: \
              service ppp9 port * 80 TCP 10.9.0.5 80 0x0000"]
        );
    }

    #[test]
    fn a_kernel_without_any_queue_support_is_an_error() {
        let root = Root::new(&[
            ("/proc/sys/kernel/osrelease", "6.1.0\n"),
            ("/boot/config-6.1.0", "CONFIG_NETFILTER_NETLINK_QUEUE=m\n"),
        ]);
        let cfg = parse_config("", "t").unwrap();
        let f = check(&cfg, &System { root: &root.0 });
        assert_eq!(find(&f, "NFQUEUE").severity, Severity::Error);
    }
}
