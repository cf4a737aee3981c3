//! The data-path tests' veth topology: three [`Ns`] (client, router, server) joined by two
//! veth pairs, with the addresses of [`super::Family`] and forwarding on in the router.
//!
//! ```text
//! cli eth0 10.99.1.2/24 fd99:1::2/64
//!   ── rtr pub0 10.99.1.1/24 10.99.1.80/24 fd99:1::1/64 fd99:1::80/64
//!      rtr priv0 192.168.77.1/24 fd99:77::1/64
//!   ── srv eth0 192.168.77.10/24 fd99:77::10/64
//! ```
//!
//! It may use [`Ns`] for everything it builds; processes started with [`Topology::spawn`]
//! write their output into the topology's [`TempDir`].

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use super::{Ns, Proc, TempDir, describe, unique_id};

/// Three namespaces `nn-<pid>-<n>-cli/rtr/srv` joined by veth pairs, ready to route. Dropping
/// it deletes them (each [`Ns`] on its own drop) and its temp dir.
pub struct Topology {
    pub id: String,
    pub cli: Ns,
    pub rtr: Ns,
    pub srv: Ns,
    pub dir: TempDir,
}

impl Topology {
    pub fn new() -> Topology {
        Topology::with_prefix("")
    }

    /// The same topology with the namespaces' roles prefixed (`nn-<pid>-<n>-<prefix>cli`
    /// ...), so that a test file's namespaces can be told from the others' at a glance.
    pub fn with_prefix(prefix: &str) -> Topology {
        let id = unique_id();
        let t = Topology {
            cli: Ns::named(&id, &format!("{prefix}cli")),
            rtr: Ns::named(&id, &format!("{prefix}rtr")),
            srv: Ns::named(&id, &format!("{prefix}srv")),
            dir: TempDir::new(&id),
            id,
        };
        t.build();
        t
    }

    fn build(&self) {
        for ns in [&self.cli, &self.rtr, &self.srv] {
            // No duplicate address detection: addresses (also link-local) usable at once.
            ns.sysctl(&[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]);
        }
        self.cli.veth_to("eth0", &self.rtr, "pub0");
        self.srv.veth_to("eth0", &self.rtr, "priv0");
        let addrs: [(&Ns, &str, &str); 10] = [
            (&self.cli, "eth0", "10.99.1.2/24"),
            (&self.cli, "eth0", "fd99:1::2/64"),
            // .1 first: it is the primary (natural) IPv4 address, .80 a secondary one.
            (&self.rtr, "pub0", "10.99.1.1/24"),
            (&self.rtr, "pub0", "10.99.1.80/24"),
            // IPv6 has no primary: `*` takes the oldest usable address, so ::1 is added first.
            (&self.rtr, "pub0", "fd99:1::1/64"),
            (&self.rtr, "pub0", "fd99:1::80/64"),
            (&self.rtr, "priv0", "192.168.77.1/24"),
            (&self.rtr, "priv0", "fd99:77::1/64"),
            (&self.srv, "eth0", "192.168.77.10/24"),
            (&self.srv, "eth0", "fd99:77::10/64"),
        ];
        for (ns, dev, a) in addrs {
            ns.addr(dev, a);
        }
        for (ns, dev) in self.links() {
            ns.up(dev);
        }
        self.rtr.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.default.forwarding=1",
        ]);
        self.cli
            .ip(&["route", "add", "default", "via", "10.99.1.1"]);
        self.cli
            .ip(&["-6", "route", "add", "default", "via", "fd99:1::1"]);
        self.srv
            .ip(&["route", "add", "default", "via", "192.168.77.1"]);
        self.srv
            .ip(&["-6", "route", "add", "default", "via", "fd99:77::1"]);
    }

    /// Every veth end with its namespace.
    fn links(&self) -> [(&Ns, &'static str); 4] {
        [
            (&self.cli, "eth0"),
            (&self.rtr, "pub0"),
            (&self.rtr, "priv0"),
            (&self.srv, "eth0"),
        ]
    }

    /// Starts `argv` in `ns`; output goes to `<label>.out` / `<label>.err` in the temp dir.
    pub fn spawn(&self, ns: &Ns, label: &str, argv: &[&str]) -> Proc {
        let stdout_path = self.dir.file(&format!("{label}.out"));
        let stderr_path = self.dir.file(&format!("{label}.err"));
        let mut cmd = ns.command(argv);
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout file"))
            .stderr(File::create(&stderr_path).expect("create stderr file"))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} `{}`: {e}", describe(&cmd)));
        Proc {
            label: label.to_string(),
            child,
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    /// Turns TX checksum offload off on every veth end (and with it TSO), inside each namespace.
    pub fn tx_offload_off(&self) {
        for (ns, dev) in self.links() {
            ns.run(&["ethtool", "-K", dev, "tx", "off"])
                .expect_ok("ethtool -K tx off");
            let k = ns.must(&["ethtool", "-k", dev]);
            assert!(
                k.lines().any(|l| l.trim() == "tx-checksumming: off"),
                "{dev} in {} still has tx-checksumming on:\n{k}",
                ns.name
            );
        }
    }

    /// MAC address of `dev` in `ns`.
    pub fn mac(&self, ns: &Ns, dev: &str) -> String {
        ns.mac(dev)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
