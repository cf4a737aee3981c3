//! Packet captures with tcpdump inside a namespace ([`Capture`], the tests' one capture
//! helper), read back with tshark ([`tshark`], [`count`], [`fields`], [`flows`], [`summary`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CmdOutput, Family, Ns, Proc, Topology, excerpt, host};

/// tshark preferences that turn checksum validation on.
pub const CHECKSUM_PREFS: [&str; 6] = [
    "-o",
    "tcp.check_checksum:TRUE",
    "-o",
    "udp.check_checksum:TRUE",
    "-o",
    "ip.check_checksum:TRUE",
];

/// Display filter for any packet with a bad IPv4 header, TCP or UDP checksum (needs
/// [`CHECKSUM_PREFS`]). Proven to catch forged checksums by the `capture_filter_*` test.
///
/// A TCP checksum of 0xFFFF where tshark computes 0x0000 is not counted: both are the same
/// one's-complement zero, receivers accept both, and Linux itself sends 0xFFFF now and then
/// (seen on the client's own packets, before any translation). tshark calls it "0xffff instead
/// of 0x0000 (see RFC 1624)".
pub const BAD_CHECKSUM_FILTER: &str = r#"(tcp.checksum.status == "Bad" && !(tcp.checksum == 0xffff && tcp.checksum_calculated == 0x0000)) || udp.checksum.status == "Bad" || ip.checksum.status == "Bad""#;

/// UDP without a checksum (0 on IPv4, invalid on IPv6). The tests' UDP peers always send one,
/// so a 0 on the wire means a translator dropped it.
pub const MISSING_UDP_CHECKSUM_FILTER: &str = "udp && !icmp && !icmpv6 && udp.checksum == 0x0000";

/// tshark's summary columns with the ports next to the addresses.
const COLUMNS: &str = r#"gui.column.format:"No.","%m","Time","%t","Source","%s","SrcPort","%uS","Destination","%d","DstPort","%uD","Protocol","%p","Length","%L","Info","%i""#;

/// Packets tcpdump may receive after the traffic and not write (see [`Capture::stop`]).
const UNWRITTEN_TAIL: u64 = 10;

/// A running tcpdump writing a pcap file: the one capture helper of the tests.
pub struct Capture {
    proc: Proc,
    pub path: PathBuf,
    pub dev: String,
    whole_tail: bool,
}

/// What to capture: [`Capture::on`] a device, then the options, then [`CaptureSpec::start`].
pub struct CaptureSpec {
    dev: String,
    name: String,
    outbound: bool,
    buffer_kib: u32,
    snaplen: Option<u32>,
    filter: String,
    whole_tail: bool,
}

impl CaptureSpec {
    /// Names the pcap (`<name>.pcap`) and the process (`tcpdump-<name>`); the device's name
    /// by default. Two captures on one device in one test need two names.
    pub fn name(mut self, name: &str) -> CaptureSpec {
        self.name = name.to_string();
        self
    }

    /// A BPF filter (tcpdump's words): small pcaps beside bulk traffic.
    pub fn filter(mut self, filter: &str) -> CaptureSpec {
        self.filter = filter.to_string();
        self
    }

    /// Only what the namespace *sends* on the device (`-Q out`).
    pub fn outbound(mut self) -> CaptureSpec {
        self.outbound = true;
        self
    }

    /// The kernel buffer, in KiB (`-B`; 8192 by default).
    pub fn buffer_kib(mut self, kib: u32) -> CaptureSpec {
        self.buffer_kib = kib;
        self
    }

    /// Only the first `bytes` of each packet (`-s`): headers are enough for most oracles.
    pub fn snaplen(mut self, bytes: u32) -> CaptureSpec {
        self.snaplen = Some(bytes);
        self
    }

    /// [`Capture::stop`] checks only that the kernel dropped nothing, not that the last block
    /// was written: for captures whose traffic may still run when they stop.
    pub fn open_tail(mut self) -> CaptureSpec {
        self.whole_tail = false;
        self
    }

    /// Starts tcpdump in `ns` and waits until it listens. `-Z root`: Debian's tcpdump would
    /// otherwise drop to its own user and fail to write into the test's directory.
    pub fn start(self, t: &Topology, ns: &Ns) -> Capture {
        let path = t.dir.file(&format!("{}.pcap", self.name));
        let p = path.to_str().expect("utf-8 path").to_string();
        let buffer = self.buffer_kib.to_string();
        let snaplen = self.snaplen.map(|s| s.to_string());
        let mut argv = vec!["tcpdump", "-i", &self.dev];
        if self.outbound {
            argv.extend(["-Q", "out"]);
        }
        argv.extend(["-n", "-U", "-B", &buffer]);
        if let Some(s) = &snaplen {
            argv.extend(["-s", s]);
        }
        argv.extend(["-Z", "root", "-w", &p]);
        argv.extend(self.filter.split_whitespace());
        let mut proc = t.spawn(ns, &format!("tcpdump-{}", self.name), &argv);
        if let Err(e) = proc.wait_stderr("listening on", Duration::from_secs(10)) {
            panic!("tcpdump {} on {} did not start: {e}", self.name, self.dev);
        }
        Capture {
            proc,
            path,
            dev: self.dev,
            whole_tail: self.whole_tail,
        }
    }
}

impl Capture {
    /// Everything on `dev` in `ns`, into `<dev>.pcap`.
    pub fn start(t: &Topology, ns: &Ns, dev: &str) -> Capture {
        Capture::on(dev).start(t, ns)
    }

    /// A capture on `dev` with options (see [`CaptureSpec`]).
    pub fn on(dev: &str) -> CaptureSpec {
        CaptureSpec {
            dev: dev.to_string(),
            name: dev.to_string(),
            outbound: false,
            buffer_kib: 8192,
            snaplen: None,
            filter: String::new(),
            whole_tail: true,
        }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns the pcap path. Panics when the
    /// kernel dropped packets: the capture would not show everything.
    pub fn stop(self) -> PathBuf {
        self.stop_counted().0
    }

    /// [`Capture::stop`], also returning how many packets tcpdump wrote.
    pub fn stop_counted(mut self) -> (PathBuf, u64) {
        // libpcap hands packets over in TPACKET_V3 blocks, retired after 1 s at the latest;
        // a block still open at SIGINT is never written (--immediate-mode avoids that but
        // makes the kernel drop packets under bulk traffic). Wait for the last block.
        std::thread::sleep(Duration::from_millis(1500));
        self.proc.signal(libc::SIGINT);
        if self.proc.wait_timeout(Duration::from_secs(10)).is_none() {
            panic!(
                "tcpdump on {} did not stop on SIGINT\n{}",
                self.dev,
                self.proc.evidence()
            );
        }
        // "N packets captured / N packets received by filter / N packets dropped by kernel".
        let err = self.proc.stderr();
        let stat = |what: &str| {
            err.lines()
                .find(|l| l.contains(what))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let (captured, received, dropped) = (
            stat("packets captured"),
            stat("received by filter"),
            stat("dropped by kernel"),
        );
        assert_eq!(
            dropped,
            Some(0),
            "tcpdump on {} dropped packets: the capture cannot prove anything\n{err}",
            self.dev
        );
        // Packets of a block still open at SIGINT count as received but are never written.
        // After the 1.5 s wait that block holds only what came after the traffic (IPv6
        // multicast listener reports, neighbour discovery): allow a handful of those.
        if self.whole_tail {
            assert!(
                captured.is_some()
                    && received
                        .unwrap_or(u64::MAX)
                        .saturating_sub(captured.unwrap_or(0))
                        <= UNWRITTEN_TAIL,
                "tcpdump on {} did not write every packet (captured {captured:?}, received \
                 {received:?}, dropped {dropped:?}):\n{err}",
                self.dev
            );
        }
        (self.path.clone(), captured.unwrap_or(0))
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs tshark on `pcap` with checksum validation on; panics when tshark itself fails.
pub fn tshark(pcap: &Path, args: &[&str]) -> CmdOutput {
    let mut argv = vec!["tshark", "-n", "-r", path_str(pcap)];
    argv.extend_from_slice(&CHECKSUM_PREFS);
    argv.extend_from_slice(args);
    let out = host(&argv);
    if !out.success() {
        panic!("tshark failed on {}\n{out}", pcap.display());
    }
    out
}

/// Number of packets matching a display filter.
pub fn count(pcap: &Path, filter: &str) -> usize {
    tshark(pcap, &["-Y", filter, "-T", "fields", "-e", "frame.number"])
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// tshark's one-line summaries of the packets matching `filter`, at most `max` of them.
/// Columns: number, time, source, source port, destination, destination port, protocol,
/// length, info. The test's UDP service on port 53 is not DNS: shown as data.
pub fn summary(pcap: &Path, filter: &str, max: usize) -> String {
    let out = tshark(
        pcap,
        &["-d", "udp.port==53,data", "-o", COLUMNS, "-Y", filter],
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    let mut s = lines
        .iter()
        .take(max)
        .map(|l| format!("    {}", l.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    if lines.len() > max {
        s.push_str(&format!("\n    [... {} more]", lines.len() - max));
    }
    s
}

/// Values of tshark fields for the packets matching `filter`, one Vec per packet.
pub fn fields(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-Y", filter, "-T", "fields", "-E", "separator=/t"];
    for f in fields {
        args.push("-e");
        args.push(f);
    }
    let out = tshark(pcap, &args);
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// One TCP or UDP packet as seen in a capture (ICMP errors, which quote packets, excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub frame: u64,
    pub proto: &'static str,
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} {}:{} -> {}:{}",
            self.frame, self.proto, self.src, self.sport, self.dst, self.dport
        )
    }
}

/// All TCP/UDP packets of `fam` in the capture.
pub fn flows(pcap: &Path, fam: Family) -> Vec<Flow> {
    let ipf = fam.ip_field();
    let filter = format!("{ipf} && (tcp || udp) && !icmp && !icmpv6");
    let src = format!("{ipf}.src");
    let dst = format!("{ipf}.dst");
    let out = tshark(
        pcap,
        &[
            "-Y",
            &filter,
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-e",
            "frame.number",
            "-e",
            &src,
            "-e",
            &dst,
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
        ],
    );
    let mut v = Vec::new();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || -> ! { panic!("unexpected tshark line {line:?} in {}", pcap.display()) };
        if f.len() < 7 {
            bad();
        }
        let (proto, sp, dp) = if !f[3].is_empty() {
            ("tcp", f[3], f[4])
        } else {
            ("udp", f[5], f[6])
        };
        v.push(Flow {
            frame: f[0].parse().unwrap_or_else(|_| bad()),
            proto,
            src: f[1].to_string(),
            dst: f[2].to_string(),
            sport: sp.parse().unwrap_or_else(|_| bad()),
            dport: dp.parse().unwrap_or_else(|_| bad()),
        });
    }
    v
}

/// Asserts that no packet in the capture has a bad checksum and that checksums were really
/// verified (some Good ones of each kind expected), printing the offending packets otherwise.
pub fn assert_checksums_good(pcap: &Path, fam: Family, what: &str) {
    let bad = count(pcap, BAD_CHECKSUM_FILTER);
    assert_eq!(
        bad,
        0,
        "{what}: {bad} packet(s) with a bad checksum in {}:\n{}\nexpert info:\n{}",
        pcap.display(),
        summary(pcap, BAD_CHECKSUM_FILTER, 20),
        excerpt(
            &tshark(
                pcap,
                &[
                    "-Y",
                    BAD_CHECKSUM_FILTER,
                    "-T",
                    "fields",
                    "-e",
                    "frame.number",
                    "-e",
                    "_ws.expert.message"
                ]
            )
            .stdout,
            2000
        )
    );
    let missing = count(pcap, MISSING_UDP_CHECKSUM_FILTER);
    assert_eq!(
        missing,
        0,
        "{what}: {missing} UDP packet(s) without a checksum in {}:\n{}",
        pcap.display(),
        summary(pcap, MISSING_UDP_CHECKSUM_FILTER, 20)
    );
    let mut kinds = vec!["tcp", "udp"];
    if fam == Family::V4 {
        kinds.push("ip");
    }
    for k in kinds {
        let good = count(pcap, &format!("{k}.checksum.status == \"Good\""));
        assert!(
            good > 0,
            "{what}: no {k} checksum was verified as Good in {}: validation not active?",
            pcap.display()
        );
    }
}
