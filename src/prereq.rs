//! `netnat check`'s look at the system: what a router needs for netnat's data path, read from
//! /proc and /sys without changing anything (so it needs no privilege).

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::config::Config;

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
        let mut s = String::new();
        std::fs::File::open(self.root.join(path.trim_start_matches('/')))
            .and_then(|f| f.take(1 << 20).read_to_string(&mut s))
            .ok()?;
        Some(s)
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
    let mut out = Vec::new();
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
    let table = sys
        .read("/proc/net/netfilter/nfnetlink_queue")
        .unwrap_or_default();
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
            severity: Severity::Warning,
            what,
            detail: format!(
                "queue {num} (of {queues}) is bound by netlink port {portid} (a running netnat, \
                 or another NFQUEUE consumer: `netnat run` would be refused)"
            ),
        },
    }
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
    fn forwarding_off_is_an_error_and_a_busy_queue_a_warning() {
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
        assert_eq!(q.severity, Severity::Warning);
        assert!(q.detail.contains("port 999"), "{q}");
        assert_eq!(find(&f, "conntrack").severity, Severity::Warning);
        assert_eq!(find(&f, "NFQUEUE").severity, Severity::Warning);
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
