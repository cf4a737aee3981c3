//! Installing the policy through netlink: one socket per session, one atomic batch per change.
//!
//! The table carries `NFT_TABLE_F_OWNER`: the kernel ties it to the socket that created it,
//! deletes it when that socket closes (crash-safe cleanup) and refuses changes from any other
//! socket with EPERM. That is why the session keeps its one socket for its whole life.
//!
//! Nothing here touches anything but table `inet netnat`.

use std::ffi::{CStr, CString, c_void};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::raw::c_char;
use std::ptr::NonNull;

use std::net::IpAddr;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Expression, Immediate, Ipv4HeaderField, Ipv6HeaderField,
    Lookup, Meta, NetworkHeaderField, Payload, Register, States, TransportHeaderField,
};
use nftnl::nftnl_sys as sys;
use nftnl::set::{Set, SetKey};
use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, MsgType, NlMsg, ProtoFamily, Rule, Table,
    default_batch_page_size,
};

use super::expr::{
    CompatNfqueue, Ct, FibDaddrIifType, Load, NativeQueue, RTN_LOCAL, Source, ct_label_bytes,
    ifname_bytes, reg32_at,
};
use super::policy::{
    ChainSpec, Element, Family, GUARD_TABLE, Hook, KeyField, Match, Policy, QueueSpec,
    Rule as PolicyRule, SetKind, SetSpec, TABLE_NAME, Verdict, concat_type, key_len,
};
use super::render::render_rule;

/// `NFT_TABLE_F_OWNER` from linux/netfilter/nf_tables.h (kernel ≥ 5.12).
pub const NFT_TABLE_F_OWNER: u32 = 0x2;

// From linux/netlink.h; not all are in the libc crate for every target.
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
// From asm-generic/socket.h.
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

/// Room reserved in the receive buffer per acknowledged message. An ACK is a small skb whose
/// accounted size (truesize) stays well below this; if the buffer overflows the kernel drops
/// ACKs and we could not tell success from failure.
const RCVBUF_PER_MSG: usize = 2048;

/// Which form of the queue verdict the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueExprKind {
    /// nft_queue's own `queue` expression.
    Native,
    /// The xtables NFQUEUE target (revision 3) through nft_compat. `nft list` shows it as a
    /// queue statement too, but a dump of it cannot be reloaded with `nft -f`.
    Compat,
}

impl fmt::Display for QueueExprKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueExprKind::Native => "native nft queue expression",
            QueueExprKind::Compat => "xtables NFQUEUE target through nft_compat",
        })
    }
}

/// What failed while changing netnat's table.
#[derive(Debug)]
pub enum NftError {
    /// A socket operation failed (`op` says which).
    Io { op: &'static str, source: io::Error },
    /// The process may not change nftables at all (EPERM on the batch itself).
    NotPermitted,
    /// EPERM on netnat's table: another socket owns it.
    OwnedByOther,
    /// The table exists without the owner flag (created by `nft -f` or an older netnat); the
    /// kernel refuses to add the flag to it. `flush_leftover` removes it.
    UnownedTableExists,
    /// The kernel lacks an expression a rule uses (ENOENT even after the compat fallback):
    /// nft_queue and nft_compat/xt_NFQUEUE, nft_fib_inet, or nft_ct.
    MissingExpression { rule: String },
    /// Any other refusal: which message, the errno and the kernel's extended-ACK text if any.
    Kernel {
        what: String,
        errno: i32,
        message: Option<String>,
    },
    /// The kernel's answers did not add up (lost or missing ACKs).
    Protocol(String),
    /// An interface name nftables cannot match exactly (empty, longer than 15 bytes, or with a
    /// NUL): refused before anything is sent, since a cut name would match another interface.
    BadInterfaceName(String),
}

impl NftError {
    /// The errno behind the error, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Io { source, .. } => source.raw_os_error(),
            NftError::NotPermitted | NftError::OwnedByOther => Some(libc::EPERM),
            NftError::UnownedTableExists => Some(libc::EOPNOTSUPP),
            NftError::MissingExpression { .. } => Some(libc::ENOENT),
            NftError::Kernel { errno, .. } => Some(*errno),
            NftError::Protocol(_) | NftError::BadInterfaceName(_) => None,
        }
    }
}

impl fmt::Display for NftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NftError::Io { op, source } => write!(f, "nftables netlink {op} failed: {source}"),
            NftError::NotPermitted => {
                f.write_str("not permitted to change nftables rules (netnat needs CAP_NET_ADMIN)")
            }
            NftError::OwnedByOther => {
                f.write_str("netnat's table is owned by another process (another netnat running?)")
            }
            NftError::UnownedTableExists => f.write_str(
                "a table `inet netnat` without netnat's owner flag already exists (left by an \
                 older netnat or loaded with nft); delete it first (`nft delete table inet \
                 netnat`, or netnat's leftover cleanup)",
            ),
            NftError::MissingExpression { rule } => write!(
                f,
                "the kernel lacks an nftables expression used by rule `{rule}` (neither the \
                 native queue (nft_queue) nor the xtables NFQUEUE target (nft_compat, \
                 xt_NFQUEUE) was accepted, or fib (nft_fib_inet), lookup or ct (nft_ct) is \
                 missing)"
            ),
            NftError::Kernel {
                what,
                errno,
                message,
            } => {
                let e = io::Error::from_raw_os_error(*errno);
                let hint = match *errno {
                    libc::EOPNOTSUPP => " (not supported by this kernel)",
                    libc::EBUSY => " (in use)",
                    libc::EINVAL => " (the kernel rejected an attribute)",
                    libc::ENOMEM | libc::ENOBUFS => " (out of kernel memory)",
                    _ => "",
                };
                write!(f, "the kernel refused {what}: {e}{hint}")?;
                if let Some(m) = message {
                    write!(f, ": {m}")?;
                }
                Ok(())
            }
            NftError::Protocol(s) => write!(f, "nftables netlink protocol error: {s}"),
            NftError::BadInterfaceName(n) => write!(
                f,
                "interface name {n:?} cannot be matched (1 to 15 bytes, no NUL)"
            ),
        }
    }
}

impl std::error::Error for NftError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NftError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One nftables netlink socket, kept for the life of the table it owns.
///
/// The socket is opened here rather than with `mnl::Socket::new`, because libmnl's
/// `mnl_socket_open` does not set close-on-exec: every child process (a hook script, or just
/// `ip netns exec nft` started by another thread) would inherit the socket and keep the owned
/// table alive, owned by a dead session, for as long as it runs. `SOCK_CLOEXEC` at creation
/// closes that race. Sending and receiving are plain `sendmsg`/`recv` on the descriptor.
pub struct NftSession {
    sock: OwnedFd,
    /// The queue form the kernel accepted, once known.
    kind: Option<QueueExprKind>,
    /// Receive buffer size already requested.
    rcvbuf: usize,
    /// Send buffer size already requested.
    sndbuf: usize,
}

impl fmt::Debug for NftSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NftSession")
            .field("fd", &self.sock.as_raw_fd())
            .field("kind", &self.kind)
            .finish()
    }
}

/// A netfilter netlink socket, close-on-exec, bound to a port id the kernel chooses.
fn open_socket() -> io::Result<OwnedFd> {
    crate::iface::sock::open_netlink(libc::NETLINK_NETFILTER, 0, 0)
}

impl NftSession {
    /// Open and bind the netfilter netlink socket this session keeps.
    pub fn open() -> Result<NftSession, NftError> {
        let sock = open_socket().map_err(|e| NftError::Io {
            op: "socket",
            source: e,
        })?;
        let fd = sock.as_raw_fd();
        // Both options are optional refinements: capped ACKs keep the receive buffer small,
        // extended ACKs may carry the kernel's reason. Older kernels lack them; ignore failure.
        setsockopt_int(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        setsockopt_int(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        Ok(NftSession {
            sock,
            kind: None,
            rcvbuf: 0,
            sndbuf: 0,
        })
    }

    /// The queue form accepted so far, if an install has decided it.
    pub fn queue_kind(&self) -> Option<QueueExprKind> {
        self.kind
    }

    /// Install `policy` as the whole content of table `inet netnat`, in one atomic batch: the
    /// table (owned by this socket), its two chains, a flush of all its rules, then the new
    /// rules. A second install replaces the first atomically.
    ///
    /// The native queue expression is tried first; if the kernel answers ENOENT for a rule, the
    /// batch is rebuilt with the compat NFQUEUE target. The decision is kept for the session.
    /// With no rules in the policy no queue expression is sent; the kind returned is then the
    /// one decided earlier, or `Native` (undecided).
    pub fn install(&mut self, policy: &Policy) -> Result<QueueExprKind, NftError> {
        check_names(policy)?;
        let has_rules = policy
            .chains()
            .iter()
            .any(|c| c.rules.iter().any(|r| r.verdict == Verdict::Queue));
        let first = self.kind.unwrap_or(QueueExprKind::Native);
        match self.install_with(policy, first) {
            Ok(()) => {
                if has_rules {
                    self.kind = Some(first);
                }
                Ok(first)
            }
            Err(Failure {
                errno: libc::ENOENT,
                label: Label::Rule { queues: true, .. },
                ..
            }) if first == QueueExprKind::Native && self.kind.is_none() => {
                match self.install_with(policy, QueueExprKind::Compat) {
                    Ok(()) => {
                        self.kind = Some(QueueExprKind::Compat);
                        Ok(QueueExprKind::Compat)
                    }
                    Err(f) => Err(f.into_error()),
                }
            }
            Err(f) => Err(f.into_error()),
        }
    }

    /// Whether the leak guard's table is there. It has no owner flag, so anyone can delete it:
    /// `nft flush ruleset`, at the top of many ruleset files (nftables.service reload), removes
    /// it while netnat's own table stays. The daemon asks every few seconds and installs again.
    pub fn guard_present(&mut self) -> Result<bool, NftError> {
        let fd = self.sock.as_raw_fd();
        drain(fd).map_err(|(op, source)| NftError::Io { op, source })?;
        let msg = get_table_msg(GUARD_TABLE, 1);
        send_pages(fd, &[&msg], msg.len()).map_err(|(op, source)| NftError::Io { op, source })?;
        let answers = receive_answers(fd).map_err(|(op, source)| NftError::Io { op, source })?;
        match answers.iter().find(|a| a.seq == 1).map(|a| -a.error) {
            Some(0) => Ok(true),
            Some(libc::ENOENT) => Ok(false),
            Some(errno) => Err(NftError::Kernel {
                what: format!("looking for table inet {GUARD_TABLE}"),
                errno,
                message: None,
            }),
            None => Err(NftError::Protocol(format!(
                "no answer when looking for table inet {GUARD_TABLE}"
            ))),
        }
    }

    /// Delete table `inet netnat` (and with it everything netnat installed). An absent table is
    /// fine.
    pub fn remove(&mut self) -> Result<(), NftError> {
        delete_table(self).map(|_| ())
    }

    fn install_with(&mut self, policy: &Policy, kind: QueueExprKind) -> Result<(), Failure> {
        let (batch, labels) = build_install_batch(policy, kind);
        self.run(&batch, labels)
    }

    /// Send one finalized batch and collect every answer to it.
    fn run(&mut self, batch: &FinalizedBatch, labels: Vec<Label>) -> Result<(), Failure> {
        let fd = self.sock.as_raw_fd();
        // Answers left over from an earlier, interrupted exchange would be taken for ours.
        drain(fd).map_err(Failure::io)?;

        let pages: Vec<&[u8]> = batch.iter().collect();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let seqs = batch.sequence_numbers();
        let want_rcv = (seqs.len() + 2) * RCVBUF_PER_MSG;
        if want_rcv > self.rcvbuf {
            // Falls back silently to the default buffer if not privileged; then a big batch may
            // lose ACKs, which is detected below.
            setsockopt_int(fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, clamp_int(want_rcv));
            self.rcvbuf = want_rcv;
        }
        // netlink refuses a message larger than the send buffer (EMSGSIZE), and a batch must go
        // in one sendmsg: the kernel aborts a batch whose end is not in the same skb.
        let want_snd = total + 4096;
        if want_snd > self.sndbuf && want_snd > 200_000 {
            setsockopt_int(fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, clamp_int(want_snd));
            self.sndbuf = want_snd;
        }
        send_pages(fd, &pages, total).map_err(Failure::io)?;
        let answers = receive_answers(fd).map_err(Failure::io)?;
        judge(seqs, labels, &answers)
    }
}

fn check_names(policy: &Policy) -> Result<(), NftError> {
    let bad = |n: &str| n.is_empty() || n.len() >= super::expr::IFNAMSIZ || n.contains('\0');
    let in_rules = policy
        .chains()
        .into_iter()
        .flat_map(|c| &c.rules)
        .flat_map(|r| &r.matches)
        .filter_map(|m| match m {
            Match::IifName(n) | Match::OifName(n) => Some(n),
            _ => None,
        });
    let in_sets = policy.sets.iter().flat_map(|s| s.ifnames());
    match in_rules.chain(in_sets).find(|n| bad(n)) {
        Some(n) => Err(NftError::BadInterfaceName(n.clone())),
        None => Ok(()),
    }
}

/// NFT_MSG_GETTABLE for `inet <name>`, acknowledged: the answer is the table and an ACK, or an
/// error (ENOENT when it does not exist). Not part of a batch: requests are not batched.
fn get_table_msg(name: &str, seq: u32) -> Vec<u8> {
    const NLMSG_HDRLEN: usize = 16;
    const NFGENMSG_LEN: usize = 4;
    const NFTA_TABLE_NAME: u16 = 1;
    let mut attrs = Vec::new();
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    put_attr(&mut attrs, NFTA_TABLE_NAME, &n);
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_GETTABLE as u16;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, resource id (network order).
    m.push(ProtoFamily::Inet as u8);
    m.push(libc::NFNETLINK_V0 as u8);
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&attrs);
    m
}

/// Delete everything netnat installs, from a fresh socket: a table left by an earlier netnat
/// (or loaded by hand) and the leak guard. Returns whether anything existed. While a live
/// netnat owns its table this is refused with [`NftError::OwnedByOther`] and nothing is
/// deleted: the guard protects that netnat's connections.
pub fn flush_leftover() -> Result<bool, NftError> {
    let mut s = NftSession::open()?;
    // One batch: if the owned table cannot be deleted, the guard stays too.
    match delete_tables(&mut s, &[TABLE_NAME, GUARD_TABLE]) {
        Ok(()) => Ok(true),
        // The first table absent: the batch was aborted; try the guard alone.
        Err(Failure {
            errno: libc::ENOENT,
            label: Label::DelTable(TABLE_NAME),
            ..
        }) => match delete_tables(&mut s, &[GUARD_TABLE]) {
            Ok(()) => Ok(true),
            Err(Failure {
                errno: libc::ENOENT,
                label: Label::DelTable(_),
                ..
            }) => Ok(false),
            Err(f) => Err(f.into_error()),
        },
        // netnat's table was there but the guard was not: the batch was aborted; again alone.
        Err(Failure {
            errno: libc::ENOENT,
            label: Label::DelTable(GUARD_TABLE),
            ..
        }) => delete_tables(&mut s, &[TABLE_NAME])
            .map(|()| true)
            .map_err(Failure::into_error),
        Err(f) => Err(f.into_error()),
    }
}

/// Delete netnat's own table: what a stopping netnat does. The guard stays.
fn delete_table(s: &mut NftSession) -> Result<bool, NftError> {
    match delete_tables(s, &[TABLE_NAME]) {
        Ok(()) => Ok(true),
        Err(Failure {
            errno: libc::ENOENT,
            label: Label::DelTable(_),
            ..
        }) => Ok(false),
        Err(f) => Err(f.into_error()),
    }
}

/// Delete `tables` in one batch (all or none).
fn delete_tables(s: &mut NftSession, tables: &[&'static str]) -> Result<(), Failure> {
    let mut batch = Batch::new();
    let msgs: Vec<TableMsg> = tables.iter().map(|t| TableMsg::new(t, None)).collect();
    for m in &msgs {
        batch.add(m, MsgType::Del);
    }
    let labels = tables.iter().map(|t| Label::DelTable(t)).collect();
    s.run(&batch.finalize(), labels)
}

/// What each message of a batch was, to say which one the kernel refused.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Label {
    BatchBegin,
    BatchEnd,
    /// Adding a table (netnat's or the guard's), by name.
    Table(&'static str),
    Chain(&'static str),
    FlushRules(&'static str),
    Set(&'static str),
    Elements(&'static str),
    DelSet(&'static str),
    Rule {
        chain: &'static str,
        /// Boxed, not a String: keeps `Failure` (returned by value on every path) small.
        text: Box<str>,
        /// Whether the rule holds the queue verdict (only those may fall back to compat).
        queues: bool,
    },
    DelTable(&'static str),
    Io,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::BatchBegin => f.write_str("the batch"),
            Label::BatchEnd => f.write_str("the commit of the batch"),
            Label::Table(t) => write!(f, "adding table inet {t}"),
            Label::Chain(c) => write!(f, "adding chain {c}"),
            Label::FlushRules(t) => write!(f, "flushing the rules of table inet {t}"),
            Label::Set(s) => write!(f, "adding set {s}"),
            Label::Elements(s) => write!(f, "adding elements to set {s}"),
            Label::DelSet(s) => write!(f, "deleting set {s} (to re-create it)"),
            Label::Rule { chain, text, .. } => write!(f, "rule `{text}` in chain {chain}"),
            Label::DelTable(t) => write!(f, "deleting table inet {t}"),
            Label::Io => f.write_str("the netlink exchange"),
        }
    }
}

/// The first refusal of a batch, before it is turned into an [`NftError`] (the fallback to the
/// compat queue needs the raw errno and which message it was).
#[derive(Debug)]
struct Failure {
    label: Label,
    errno: i32,
    message: Option<String>,
    io: Option<(&'static str, io::Error)>,
    protocol: Option<String>,
}

impl Failure {
    fn io((op, e): (&'static str, io::Error)) -> Failure {
        Failure {
            label: Label::Io,
            errno: e.raw_os_error().unwrap_or(0),
            message: None,
            io: Some((op, e)),
            protocol: None,
        }
    }

    fn into_error(self) -> NftError {
        if let Some((op, source)) = self.io {
            return NftError::Io { op, source };
        }
        if let Some(p) = self.protocol {
            return NftError::Protocol(p);
        }
        match (self.errno, &self.label) {
            // nfnetlink checks CAP_NET_ADMIN before looking at the batch's content.
            (libc::EPERM, Label::BatchBegin) => NftError::NotPermitted,
            (libc::EPERM, _) => NftError::OwnedByOther,
            (libc::EOPNOTSUPP, Label::Table(t)) if *t == TABLE_NAME => NftError::UnownedTableExists,
            (libc::ENOENT, Label::Rule { text, .. }) => NftError::MissingExpression {
                rule: text.to_string(),
            },
            (errno, label) => NftError::Kernel {
                what: label.to_string(),
                errno,
                message: self.message,
            },
        }
    }
}

/// One NLMSG_ERROR answer: the sequence number it answers, 0 or a negative errno, and the
/// extended-ACK message if the kernel gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    seq: u32,
    error: i32,
    message: Option<String>,
}

/// Match the answers against the batch: any refusal fails it (the earliest one is the cause,
/// later ones usually follow from it); every message that asked for an ACK must have one.
fn judge(
    seqs: std::ops::Range<u32>,
    labels: Vec<Label>,
    answers: &[Answer],
) -> Result<(), Failure> {
    // nftnl numbers the batch begin and end messages only when the kernel acknowledges them
    // (≥ 6.10); the range then holds two more numbers than there are objects.
    let n = labels.len() as u32;
    let with_ends = seqs.len() as u32 == n + 2;
    let label_of = |seq: u32| -> Label {
        if with_ends {
            if seq == seqs.start {
                return Label::BatchBegin;
            }
            if seq + 1 == seqs.end {
                return Label::BatchEnd;
            }
            labels
                .get((seq - seqs.start - 1) as usize)
                .cloned()
                .unwrap_or(Label::BatchEnd)
        } else {
            seq.checked_sub(seqs.start)
                .and_then(|i| labels.get(i as usize).cloned())
                // Without numbered ends the begin message carries sequence number 0.
                .unwrap_or(Label::BatchBegin)
        }
    };
    let mut errors: Vec<&Answer> = answers.iter().filter(|a| a.error != 0).collect();
    errors.sort_by_key(|a| (a.seq == 0, a.seq));
    if let Some(a) = errors.first() {
        return Err(Failure {
            label: label_of(a.seq),
            errno: -a.error,
            message: a.message.clone(),
            io: None,
            protocol: None,
        });
    }
    let missing: Vec<u32> = seqs
        .clone()
        .filter(|s| !answers.iter().any(|a| a.seq == *s))
        .collect();
    if !missing.is_empty() {
        return Err(Failure {
            label: Label::Io,
            errno: 0,
            message: None,
            io: None,
            protocol: Some(format!(
                "{} of {} messages were not acknowledged (first: {}); the receive buffer may \
                 be too small",
                missing.len(),
                seqs.len(),
                label_of(missing[0])
            )),
        });
    }
    Ok(())
}

fn clamp_int(v: usize) -> libc::c_int {
    v.min(libc::c_int::MAX as usize / 2) as libc::c_int
}

fn setsockopt_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: `fd` is the session's open socket; the option value is a live c_int whose size
    // is passed along. Failure only means the option stays at its default.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast::<c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The whole batch in one `sendmsg` to the kernel (port 0).
fn send_pages(
    fd: libc::c_int,
    pages: &[&[u8]],
    total: usize,
) -> Result<(), (&'static str, io::Error)> {
    let mut iov: Vec<libc::iovec> = pages
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: an all-zero sockaddr_nl is valid (family set below, pid 0 = the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast::<c_void>();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `addr` and at iovecs describing the batch's pages, all alive
        // for the duration of the call; the kernel only reads them.
        let n = unsafe { libc::sendmsg(fd, &msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(("sendmsg", e));
        }
        if n as usize != total {
            return Err((
                "sendmsg",
                io::Error::other(format!("sent {n} of {total} bytes")),
            ));
        }
        return Ok(());
    }
}

/// Receive without blocking into `buf`; `Ok(None)` when nothing is queued.
fn recv_nonblocking(fd: libc::c_int, buf: &mut [u64]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is a live, writable buffer of exactly the given byte length; u64
        // elements keep it aligned for nlmsghdr.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast::<c_void>(),
                std::mem::size_of_val(buf),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    }
}

fn drain(fd: libc::c_int) -> Result<(), (&'static str, io::Error)> {
    let mut buf = vec![0u64; 8192];
    loop {
        match recv_nonblocking(fd, &mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            // ENOBUFS reports an earlier overflow; it is cleared by reporting it.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
            Err(e) => return Err(("recv", e)),
        }
    }
}

/// Collect every answer queued for us. nfnetlink processes a batch synchronously inside
/// `sendmsg` (module loading and replays included), so when `sendmsg` has returned, all
/// answers are already queued and a non-blocking read until EAGAIN sees them all.
fn receive_answers(fd: libc::c_int) -> Result<Vec<Answer>, (&'static str, io::Error)> {
    let mut buf = vec![0u64; 8192];
    let mut out = Vec::new();
    loop {
        let n = match recv_nonblocking(fd, &mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(out),
            Err(e) => return Err(("recv", e)),
        };
        // SAFETY: reinterpreting the first `n` received bytes of the u64 buffer as bytes; u8
        // has no alignment or validity requirements and `n` ≤ the buffer's byte length.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        for msg in mnl::NlMessages::new(bytes) {
            let msg = msg.map_err(|e| ("parse", e))?;
            if let Some(a) = parse_error_msg(msg) {
                out.push(a);
            }
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Decode an NLMSG_ERROR message: `struct nlmsgerr { int error; struct nlmsghdr msg; }`, the
/// original payload unless capped, then extended-ACK attributes if flagged.
fn parse_error_msg(m: &[u8]) -> Option<Answer> {
    const HDR: usize = 16;
    let ty = u16_at(m, 4)?;
    if ty != libc::NLMSG_ERROR as u16 {
        return None;
    }
    let flags = u16_at(m, 6)?;
    let error = u32_at(m, HDR)? as i32;
    let inner_len = u32_at(m, HDR + 4)? as usize;
    let seq = u32_at(m, HDR + 4 + 8)?;
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let inner = if flags & NLM_F_CAPPED != 0 {
            HDR
        } else {
            inner_len.next_multiple_of(4)
        };
        let mut off = HDR + 4 + inner;
        while let (Some(len), Some(t)) = (u16_at(m, off), u16_at(m, off + 2)) {
            let len = len as usize;
            if len < 4 || off + len > m.len() {
                break;
            }
            if t & 0x3fff == NLMSGERR_ATTR_MSG {
                let s = &m[off + 4..off + len];
                let s = s.split(|&c| c == 0).next().unwrap_or(s);
                message = Some(String::from_utf8_lossy(s).into_owned());
            }
            off += len.next_multiple_of(4);
        }
    }
    Some(Answer {
        seq,
        error,
        message,
    })
}

/// A table message built with raw libnftnl calls, because `nftnl::Table` always sends flags 0
/// and offers no way to set the owner flag.
struct TableMsg {
    table: NonNull<sys::nftnl_table>,
}

impl TableMsg {
    fn new(name: &str, flags: Option<u32>) -> TableMsg {
        let name = CString::new(name).expect("table name without NUL");
        // SAFETY: the allocation is checked for NULL; the setters copy the integer and the
        // NUL-terminated name into the table object.
        unsafe {
            let t = NonNull::new(sys::nftnl_table_alloc()).unwrap_or_else(|| std::process::abort());
            sys::nftnl_table_set_u32(
                t.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                ProtoFamily::Inet as u32,
            );
            sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            if let Some(f) = flags {
                sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, f);
            }
            TableMsg { table: t }
        }
    }
}

impl Drop for TableMsg {
    fn drop(&mut self) {
        // SAFETY: the table object is owned by this value and freed exactly once.
        unsafe { sys::nftnl_table_free(self.table.as_ptr()) };
    }
}

// SAFETY: the message is one table header plus name and flags attributes, far below the
// maximum message size the batch reserves for each message.
unsafe impl NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWTABLE, libc::NLM_F_ACK | libc::NLM_F_CREATE),
            MsgType::Del => (libc::NFT_MSG_DELTABLE, libc::NLM_F_ACK),
        };
        // SAFETY: the caller (nftnl's Batch) gives a buffer with room for a maximal message;
        // the table object is alive.
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty as u16,
                ProtoFamily::Inet as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(hdr, self.table.as_ptr());
        }
    }
}

/// DELRULE naming only the table: the kernel then deletes every rule of every chain in it.
struct FlushRules {
    rule: NonNull<sys::nftnl_rule>,
}

impl FlushRules {
    fn new(table: &CStr) -> FlushRules {
        // SAFETY: the allocation is checked; the setters copy the family and the name.
        unsafe {
            let r = NonNull::new(sys::nftnl_rule_alloc()).unwrap_or_else(|| std::process::abort());
            sys::nftnl_rule_set_u32(
                r.as_ptr(),
                sys::NFTNL_RULE_FAMILY as u16,
                ProtoFamily::Inet as u32,
            );
            sys::nftnl_rule_set_str(r.as_ptr(), sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
            FlushRules { rule: r }
        }
    }
}

impl Drop for FlushRules {
    fn drop(&mut self) {
        // SAFETY: owned by this value, freed once.
        unsafe { sys::nftnl_rule_free(self.rule.as_ptr()) };
    }
}

// SAFETY: a header plus the table name: far below the per-message maximum.
unsafe impl NlMsg for FlushRules {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        // SAFETY: as for TableMsg: room for a maximal message, live rule object.
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_DELRULE as u16,
                ProtoFamily::Inet as u16,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_rule_nlmsg_build_payload(hdr, self.rule.as_ptr());
        }
    }
}

/// A named set of netnat's table, with the concatenated key type of `kind` and no elements:
/// the elements go in [`ElementsMsg`]s. nftnl's `Set` is typed by a key type with a fixed
/// datatype and length, which concatenations do not have; the set's real key type and length
/// are set on the libnftnl object afterwards. `id` must be unique within the batch (the kernel
/// uses it to find a set created in the same batch when the name does not).
fn new_set<'a>(kind: SetKind, id: u32, table: &'a Table) -> Set<'a, NoKey> {
    let name = CString::new(kind.name()).expect("set name without NUL");
    let set = Set::<NoKey>::new_named(&name, id, table, ProtoFamily::Inet);
    let key = kind.key();
    // SAFETY: `set` owns a live libnftnl set object; both attributes are u32 and copied.
    unsafe {
        let p = set.as_ptr().as_ptr();
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, concat_type(key));
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, key_len(key) as u32);
    }
    set
}

/// The key type parameter of the libnftnl sets: never used for elements (see [`new_set`]).
struct NoKey;

impl SetKey for NoKey {
    // Placeholders, overwritten in `new_set`.
    const TYPE: u32 = 0;
    const LEN: u32 = 0;

    fn data(&self) -> Box<[u8]> {
        Box::new([])
    }
}

/// Appends a set element's key as the lookup sees the registers: each component in the byte
/// order its load produces (interface names zero-padded to IFNAMSIZ, addresses and ports in
/// network order, the protocol as one byte), each padded with zeros to a multiple of 4 bytes.
fn push_element_key(out: &mut Vec<u8>, set: &SetSpec, e: &Element) {
    for field in set.kind.key() {
        let start = out.len();
        match field {
            KeyField::IifName | KeyField::OifName => {
                out.extend_from_slice(&ifname_bytes(set.ifname(e)))
            }
            KeyField::Daddr(_) | KeyField::Saddr(_) => match e.addr {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            },
            KeyField::L4Proto => out.push(e.proto),
            KeyField::Dport | KeyField::Sport => out.extend_from_slice(&e.port.to_be_bytes()),
        }
        debug_assert_eq!(out.len() - start, field.loaded_len(), "{field:?} {e:?}");
        out.resize(start + field.padded_len(), 0);
    }
}

// nf_tables netlink attributes of a NEWSETELEM message (linux/netfilter/nf_tables.h).
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
/// Netlink attribute header length.
const NLA_HDRLEN: usize = 4;
/// Largest attribute: its length field is 16 bits.
const NLA_MAX: usize = u16::MAX as usize;

/// Bytes one element takes in the element list: its nest, the key nest, the value attribute.
fn element_attr_len(kind: SetKind) -> usize {
    3 * NLA_HDRLEN + key_len(kind.key()).next_multiple_of(4)
}

/// How many elements of `kind` fit in one NEWSETELEM message: the element list is one
/// attribute, whose length field is 16 bits.
fn elements_per_msg(kind: SetKind) -> usize {
    (NLA_MAX - NLA_HDRLEN) / element_attr_len(kind)
}

/// Appends attribute `ty` with `payload`, padded to 4 bytes.
fn put_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = NLA_HDRLEN + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Starts a nested attribute; [`end_nest`] fills in its length.
fn start_nest(out: &mut Vec<u8>, ty: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nest(out: &mut [u8], at: usize) {
    let len = u16::try_from(out.len() - at).expect("a nest fits its 16-bit length");
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// One NEWSETELEM message with a run of a set's elements, encoded straight from the policy's
/// compact elements: no per-element libnftnl object or key buffer is made, which for 10,000
/// services would take several MiB. The layout is libnftnl's (`nft --debug=netlink` shows the
/// same): set name, batch id of the set and table, then the element list, each element a nest
/// holding its key. A unit test checks the bytes against libnftnl's.
struct ElementsMsg<'a> {
    table: &'a CStr,
    set: &'a SetSpec,
    /// The elements of this message: at most [`elements_per_msg`].
    elements: &'a [Element],
    id: u32,
}

impl ElementsMsg<'_> {
    /// The attributes after nfgenmsg.
    fn payload(&self) -> Vec<u8> {
        let kind = self.set.kind;
        let mut out =
            Vec::with_capacity(64 + self.elements.len() * element_attr_len(kind) + NLA_HDRLEN);
        let mut name = kind.name().as_bytes().to_vec();
        name.push(0);
        put_attr(&mut out, NFTA_SET_ELEM_LIST_SET, &name);
        put_attr(&mut out, NFTA_SET_ELEM_LIST_SET_ID, &self.id.to_be_bytes());
        put_attr(
            &mut out,
            NFTA_SET_ELEM_LIST_TABLE,
            self.table.to_bytes_with_nul(),
        );
        let list = start_nest(&mut out, NFTA_SET_ELEM_LIST_ELEMENTS);
        for (i, e) in self.elements.iter().enumerate() {
            // libnftnl numbers the element nests from 1 in each message (nft itself uses
            // NFTA_LIST_ELEM); the kernel does not look at the type.
            let elem = start_nest(&mut out, (i + 1) as u16);
            let key = start_nest(&mut out, NFTA_SET_ELEM_KEY);
            let value = start_nest(&mut out, NFTA_DATA_VALUE);
            // A plain attribute, not a nest: clear the flag start_nest set.
            out[value + 2..value + 4].copy_from_slice(&NFTA_DATA_VALUE.to_ne_bytes());
            push_element_key(&mut out, self.set, e);
            end_nest(&mut out, value);
            end_nest(&mut out, key);
            end_nest(&mut out, elem);
        }
        end_nest(&mut out, list);
        out
    }
}

// SAFETY: the element list is one attribute (at most 64 KiB, `elements_per_msg`), the rest a
// header and three short attributes: within the maximum message size the batch reserves.
unsafe impl NlMsg for ElementsMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        let payload = self.payload();
        assert!(payload.len() <= NLA_MAX + 256, "element message too long");
        // SAFETY: the caller (nftnl's Batch) gives a buffer with room for a maximal message
        // (64 KiB and a page); the header builder writes nlmsghdr and nfgenmsg at its start
        // and the payload is copied right after them, within that room.
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_NEWSETELEM as u16,
                ProtoFamily::Inet as u16,
                (libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK) as u16,
                seq,
            );
            let at = (*hdr).nlmsg_len as usize;
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                buf.cast::<u8>().add(at),
                payload.len(),
            );
            (*hdr).nlmsg_len = (at + payload.len()) as u32;
        }
    }
}

/// The bytes of the batch [`NftSession::install`] sends for `policy`, built without a socket:
/// for the `config_to_batch` fuzz target, not an interface.
#[doc(hidden)]
pub fn install_batch_bytes(policy: &Policy, kind: QueueExprKind) -> Vec<u8> {
    let (batch, _) = build_install_batch(policy, kind);
    batch.iter().flatten().copied().collect()
}

/// The install batch and what each of its messages is.
///
/// Order: the table (owned by this socket), its chains, a flush of all its rules, then each set
/// netnat knows of is deleted (created first if missing: add-then-delete is how an object that
/// may or may not exist is removed within one batch); then the policy's sets are created anew
/// with their elements, then the rules. Flushing the rules first releases every rule's
/// reference to a set, which is what allows deleting the sets in the same batch. Re-creating
/// the sets (rather than flushing and refilling them) keeps their order in the table the
/// policy's order, so `nft list` shows them as `render` does. The chains are kept, so the
/// hooks stay registered across a replacement; everything takes effect in one commit.
fn build_install_batch(policy: &Policy, kind: QueueExprKind) -> (FinalizedBatch, Vec<Label>) {
    // One page for the whole batch where it is bigger than the default: the batch is written
    // once, in order, and libnftnl moves a message that crosses a page's end to a new page, so
    // smaller pages would leave up to a maximal message (64 KiB) of slack in each.
    let estimate = policy
        .sets
        .iter()
        .map(|s| s.len() * element_attr_len(s.kind) + 128)
        .sum::<usize>()
        + 64 * 1024;
    let page = (default_batch_page_size() as usize).max(estimate);
    let mut batch = Batch::with_page_size(u32::try_from(page).unwrap_or(u32::MAX / 2));
    let mut labels = Vec::new();
    let name = CString::new(policy.table).expect("table name without NUL");
    // Only used for its name and family by the chain, set and rule messages.
    let table = Table::new(&name, ProtoFamily::Inet);
    let specs = policy.chains();
    let chains = add_table(
        &mut batch,
        &mut labels,
        (policy.table, &table),
        Some(NFT_TABLE_F_OWNER),
        &specs,
    );

    for set_kind in SetKind::ALL {
        let set = new_set(set_kind, set_id(set_kind, false), &table);
        batch.add(&set, MsgType::Add);
        labels.push(Label::Set(set_kind.name()));
        batch.add(&set, MsgType::Del);
        labels.push(Label::DelSet(set_kind.name()));
    }
    let mut sets = Vec::new();
    for spec in &policy.sets {
        let set_name = spec.kind.name();
        let id = set_id(spec.kind, true);
        let set = new_set(spec.kind, id, &table);
        batch.add(&set, MsgType::Add);
        labels.push(Label::Set(set_name));
        // As many elements per message as the element list attribute can hold (64 KiB), so
        // thousands of elements take a handful of messages.
        for elements in spec.raw().chunks(elements_per_msg(spec.kind)) {
            let msg = ElementsMsg {
                table: &name,
                set: spec,
                elements,
                id,
            };
            batch.add(&msg, MsgType::Add);
            labels.push(Label::Elements(set_name));
        }
        sets.push(set);
    }

    let queue = policy.queue_spec();
    let rules = Rules {
        queue: &queue,
        kind,
        sets: &sets,
    };
    rules.add(&mut batch, &mut labels, &specs, &chains);

    // The leak guard, in the same commit: there is no moment in which a connection is
    // translated but not guarded, or the guard is keyed to a mark netnat no longer sets. Its
    // table is not owned (it must outlive this process); its chains are kept and its rules
    // replaced, like netnat's.
    let guard = &policy.guard;
    let guard_name = CString::new(guard.table).expect("table name without NUL");
    let guard_table = Table::new(&guard_name, ProtoFamily::Inet);
    let guard_specs = guard.chains();
    let guard_chains = add_table(
        &mut batch,
        &mut labels,
        (guard.table, &guard_table),
        None,
        &guard_specs,
    );
    rules.add(&mut batch, &mut labels, &guard_specs, &guard_chains);
    (batch.finalize(), labels)
}

/// Adds table `name` (with `flags`), its chains and a flush of all its rules to the batch;
/// returns the chains, for the rules that follow. Chains are kept across installs (their
/// hooks stay registered), rules replaced.
fn add_table<'a>(
    batch: &mut Batch,
    labels: &mut Vec<Label>,
    (name, table): (&'static str, &'a Table),
    flags: Option<u32>,
    specs: &[&ChainSpec],
) -> Vec<Chain<'a>> {
    batch.add(&TableMsg::new(name, flags), MsgType::Add);
    labels.push(Label::Table(name));
    let chains: Vec<Chain<'a>> = specs.iter().map(|s| chain(s, table)).collect();
    for (spec, chain) in specs.iter().zip(&chains) {
        batch.add(chain, MsgType::Add);
        labels.push(Label::Chain(spec.name));
    }
    batch.add(&FlushRules::new(table.get_name()), MsgType::Del);
    labels.push(Label::FlushRules(name));
    chains
}

/// What every rule of one install batch is built with.
struct Rules<'a> {
    queue: &'a QueueSpec,
    kind: QueueExprKind,
    sets: &'a [Set<'a, NoKey>],
}

impl Rules<'_> {
    /// Adds the rules of `specs` to their `chains`, each labelled with its nft text.
    fn add(
        &self,
        batch: &mut Batch,
        labels: &mut Vec<Label>,
        specs: &[&ChainSpec],
        chains: &[Chain<'_>],
    ) {
        for (spec, chain) in specs.iter().zip(chains) {
            for r in &spec.rules {
                let rule = build_rule(chain, r, self.queue, self.kind, self.sets);
                batch.add(&rule, MsgType::Add);
                labels.push(Label::Rule {
                    chain: spec.name,
                    text: render_rule(r, self.queue).into(),
                    queues: r.verdict == Verdict::Queue,
                });
            }
        }
    }
}

/// Batch-unique set ids: the placeholder that is deleted, and the set that replaces it.
fn set_id(kind: SetKind, live: bool) -> u32 {
    let n = kind as u32 + 1;
    if live {
        n + SetKind::ALL.len() as u32
    } else {
        n
    }
}

/// A base chain (filter, policy accept) or, without a hook, a regular chain.
fn chain<'a>(spec: &ChainSpec, table: &'a Table) -> Chain<'a> {
    let name = CString::new(spec.name).expect("chain name without NUL");
    let mut c = Chain::new(&name, table);
    if let Some(hook) = spec.hook {
        let hook = match hook {
            Hook::Prerouting => nftnl::Hook::PreRouting,
            Hook::Postrouting => nftnl::Hook::PostRouting,
        };
        c.set_hook(hook, spec.priority);
        c.set_type(ChainType::Filter);
        c.set_policy(nftnl::Policy::Accept);
    }
    c
}

fn eq(data: &[u8]) -> Cmp<&[u8]> {
    Cmp::new(CmpOp::Eq, data)
}

fn add(rule: &mut Rule<'_>, load: &impl Expression, value: &[u8]) {
    rule.add_expr(load);
    rule.add_expr(&eq(value));
}

/// Transport header bytes (nftnl's "bits" fields of raw payloads are really bytes).
fn th(offset: u32, len: u32) -> Payload {
    Payload::Transport(TransportHeaderField::Raw {
        offset_bits: offset,
        length_bits: len,
    })
}

/// Where a key component comes from.
fn key_source(f: KeyField) -> Source {
    let meta = |k: libc::c_int| Source::Meta(k as u32);
    let net = |offset, len| Source::Network { offset, len };
    match f {
        KeyField::IifName => meta(libc::NFT_META_IIFNAME),
        KeyField::OifName => meta(libc::NFT_META_OIFNAME),
        KeyField::L4Proto => meta(libc::NFT_META_L4PROTO),
        KeyField::Saddr(Family::Ipv4) => net(12, 4),
        KeyField::Daddr(Family::Ipv4) => net(16, 4),
        KeyField::Saddr(Family::Ipv6) => net(8, 16),
        KeyField::Daddr(Family::Ipv6) => net(24, 16),
        KeyField::Sport => Source::Transport { offset: 0, len: 2 },
        KeyField::Dport => Source::Transport { offset: 2, len: 2 },
    }
}

/// Where a reply set's key component comes from when looked up with the packet quoted in an
/// ICMP error (8 bytes of ICMP header, then the quoted IP header): the quote's destination
/// address, protocol and destination port stand where a reply's source, protocol and source
/// port stand. Offsets assume a 20-byte quoted IPv4 header or a 40-byte IPv6 one.
fn quoted_key_source(f: KeyField, family: Family) -> Source {
    let th = |offset, len| Source::Transport { offset, len };
    match (f, family) {
        (KeyField::Saddr(Family::Ipv4), _) => th(8 + 16, 4),
        (KeyField::Saddr(Family::Ipv6), _) => th(8 + 24, 16),
        (KeyField::L4Proto, Family::Ipv4) => th(8 + 9, 1),
        (KeyField::L4Proto, Family::Ipv6) => th(8 + 6, 1),
        (KeyField::Sport, Family::Ipv4) => th(8 + 20 + 2, 2),
        (KeyField::Sport, Family::Ipv6) => th(8 + 40 + 2, 2),
        (other, _) => key_source(other),
    }
}

/// The expressions of one rule: each plain match is a load into register 1 and an equality
/// compare; a lookup loads its key's components into consecutive 32-bit registers from
/// `NFT_REG32_00` (the first quarter of register 1, where the lookup reads) and looks the key
/// up. Compared data is in the byte order the load produces: network order for packet fields,
/// native order for meta and fib values.
fn build_rule<'a>(
    chain: &'a Chain<'a>,
    r: &PolicyRule,
    q: &QueueSpec,
    kind: QueueExprKind,
    sets: &[Set<'_, NoKey>],
) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    for m in &r.matches {
        match m {
            Match::IifName(n) => add(&mut rule, &Meta::IifName, &ifname_bytes(n)),
            Match::OifName(n) => add(&mut rule, &Meta::OifName, &ifname_bytes(n)),
            Match::NfProto(f) => add(&mut rule, &Meta::NfProto, &[f.nfproto()]),
            Match::Daddr(IpAddr::V4(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr)),
                &a.octets(),
            ),
            Match::Daddr(IpAddr::V6(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr)),
                &a.octets(),
            ),
            Match::Saddr(IpAddr::V4(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr)),
                &a.octets(),
            ),
            Match::Saddr(IpAddr::V6(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr)),
                &a.octets(),
            ),
            Match::FibDaddrIifLocal => add(&mut rule, &FibDaddrIifType, &RTN_LOCAL.to_ne_bytes()),
            Match::L4Proto(p) => add(&mut rule, &Meta::L4Proto, &[*p]),
            Match::Dport(p) => add(&mut rule, &th(2, 2), &p.to_be_bytes()),
            Match::Sport(p) => add(&mut rule, &th(0, 2), &p.to_be_bytes()),
            Match::IcmpType(t) => add(&mut rule, &th(0, 1), &[*t]),
            Match::QuotedByteNot { offset, value } => {
                rule.add_expr(&th(u32::from(*offset), 1));
                rule.add_expr(&Cmp::new(CmpOp::Neq, *value));
            }
            Match::Lookup(set_kind) | Match::LookupQuoted(set_kind) => {
                let quoted = matches!(m, Match::LookupQuoted(_));
                let mut offset = 0;
                for &f in set_kind.key() {
                    let source = if quoted {
                        quoted_key_source(f, set_kind.family())
                    } else {
                        key_source(f)
                    };
                    rule.add_expr(&Load {
                        source,
                        dreg: reg32_at(offset),
                    });
                    offset += f.padded_len();
                }
                let wanted = CString::new(set_kind.name()).expect("set name without NUL");
                let set = sets
                    .iter()
                    .find(|s| s.get_name() == wanted.as_c_str())
                    .expect("the policy has a set for each of its lookups");
                rule.add_expr(&Lookup::new(set));
            }
            Match::CtStateNew => {
                // What nft generates for `ct state new`: state is a bit mask, so mask and test
                // for non-zero rather than compare for equality.
                let new = States::NEW.bits();
                rule.add_expr(&Conntrack::State);
                rule.add_expr(&Bitwise::new(new, 0u32));
                rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
            }
            Match::CtStateInvalid => {
                rule.add_expr(&Conntrack::State);
                rule.add_expr(&Bitwise::new(States::INVALID.bits(), 0u32));
                rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
            }
            Match::CtDirection(d) => add(
                &mut rule,
                &Ct {
                    key: libc::NFT_CT_DIRECTION as u32,
                    set: false,
                },
                &[d.value()],
            ),
            Match::CtLabel(bit) => {
                // As nft does it: mask the 128 label bits with the one wanted, test non-zero.
                let label = ct_label_bytes(*bit);
                rule.add_expr(&Ct {
                    key: libc::NFT_CT_LABELS as u32,
                    set: false,
                });
                rule.add_expr(&Bitwise::new(&label[..], &[0u8; 16][..]));
                rule.add_expr(&Cmp::new(CmpOp::Neq, &[0u8; 16][..]));
            }
            Match::MarkHas(bits) | Match::MarkLacks(bits) => {
                let op = if matches!(m, Match::MarkHas(_)) {
                    CmpOp::Eq
                } else {
                    CmpOp::Neq
                };
                rule.add_expr(&Meta::Mark { set: false });
                rule.add_expr(&Bitwise::new(*bits, 0u32));
                rule.add_expr(&Cmp::new(op, *bits));
            }
        }
    }
    match r.verdict {
        Verdict::Queue => match kind {
            QueueExprKind::Native => rule.add_expr(&NativeQueue {
                num: q.num,
                total: q.total,
                flags: q.flags(),
            }),
            QueueExprKind::Compat => rule.add_expr(&CompatNfqueue {
                num: q.num,
                total: q.total,
                flags: q.flags(),
            }),
        },
        Verdict::Continue => {}
        Verdict::Drop => rule.add_expr(&nftnl::expr::Verdict::Drop),
        Verdict::SetCtLabel(bit) => {
            rule.add_expr(&Immediate::new(ct_label_bytes(bit), Register::Reg1));
            rule.add_expr(&Ct {
                key: libc::NFT_CT_LABELS as u32,
                set: true,
            });
        }
        Verdict::ClearMark(bits) => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Bitwise::new(!bits, 0u32));
            rule.add_expr(&Meta::Mark { set: true });
        }
    }
    if let Some(c) = r.comment {
        let c = CString::new(c).expect("comment without NUL");
        rule.set_comment(c)
            .expect("netnat's comments fit libnftnl's limit");
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppAddr, Flags, Protocol, Service};
    use crate::nft::policy::KeyValue;

    // nf_tables netlink attribute numbers (linux/netfilter/nf_tables.h).
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFTA_TABLE_NAME: u16 = 1;
    const NFTA_TABLE_FLAGS: u16 = 2;
    const NFTA_RULE_TABLE: u16 = 1;
    const NFTA_RULE_CHAIN: u16 = 2;
    const NFTA_RULE_EXPRESSIONS: u16 = 4;
    const NFTA_LIST_ELEM: u16 = 1;
    const NFTA_EXPR_NAME: u16 = 1;
    const NFTA_EXPR_DATA: u16 = 2;
    const NFTA_CMP_DATA: u16 = 3;
    const NFTA_DATA_VALUE: u16 = 1;

    /// (type without flag bits, payload) of each attribute in `b`.
    fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 4 <= b.len() {
            let len = u16_at(b, off).unwrap() as usize;
            let ty = u16_at(b, off + 2).unwrap() & 0x3fff;
            assert!(len >= 4 && off + len <= b.len(), "malformed attribute");
            out.push((ty, &b[off + 4..off + len]));
            off += len.next_multiple_of(4);
        }
        out
    }

    fn attr<'a>(list: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
        list.iter().find(|(t, _)| *t == ty).map(|(_, p)| *p)
    }

    fn cstr(b: &[u8]) -> &str {
        std::str::from_utf8(b.split(|&c| c == 0).next().unwrap()).unwrap()
    }

    /// Every (nf_tables message type, attributes after nfgenmsg) of a batch, batch
    /// begin/end left out.
    fn messages(batch: &FinalizedBatch) -> Vec<(u16, u16, Vec<u8>)> {
        let bytes: Vec<u8> = batch.iter().flatten().copied().collect();
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= bytes.len() {
            let len = u32_at(&bytes, off).unwrap() as usize;
            let ty = u16_at(&bytes, off + 4).unwrap();
            let flags = u16_at(&bytes, off + 6).unwrap();
            if ty >> 8 == NFNL_SUBSYS_NFTABLES {
                out.push((ty & 0xff, flags, bytes[off + 20..off + len].to_vec()));
            }
            off += len.next_multiple_of(4);
        }
        out
    }

    /// (name, data attributes) of each expression of a NEWRULE message.
    fn expressions(rule_attrs: &[u8]) -> Vec<(String, Vec<u8>)> {
        let top = attrs(rule_attrs);
        let list = attr(&top, NFTA_RULE_EXPRESSIONS).expect("expressions");
        attrs(list)
            .into_iter()
            .filter(|(t, _)| *t == NFTA_LIST_ELEM)
            .map(|(_, e)| {
                let e = attrs(e);
                let name = cstr(attr(&e, NFTA_EXPR_NAME).unwrap()).to_string();
                (name, attr(&e, NFTA_EXPR_DATA).unwrap_or(&[]).to_vec())
            })
            .collect()
    }

    fn sample() -> Policy {
        Policy::new(
            &[Service {
                iface: "ppp0".into(),
                app_addr: AppAddr::Interface,
                app_port: 80,
                protocol: Protocol::Tcp,
                act_addr: "192.168.77.10".parse().unwrap(),
                act_port: 8080,
                flags: Flags(0),
            }],
            4747,
        )
    }

    fn rules(batch: &FinalizedBatch) -> Vec<Vec<(String, Vec<u8>)>> {
        messages(batch)
            .into_iter()
            .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWRULE as u16)
            .map(|(_, _, a)| expressions(&a))
            .collect()
    }

    /// Rules whose last expression is a queue verdict (either form).
    fn queue_rules(batch: &FinalizedBatch) -> Vec<Vec<(String, Vec<u8>)>> {
        rules(batch)
            .into_iter()
            .filter(|r| matches!(r.last(), Some((n, _)) if n == "queue" || n == "target"))
            .collect()
    }

    fn queue_rule_count(p: &Policy) -> usize {
        p.chains()
            .iter()
            .chain(p.guard.chains().iter())
            .flat_map(|c| &c.rules)
            .filter(|r| r.verdict == Verdict::Queue)
            .count()
    }

    #[test]
    fn native_queue_expression_attributes() {
        let (batch, labels) = build_install_batch(&sample(), QueueExprKind::Native);
        let all = rules(&batch);
        let rule_labels = labels
            .iter()
            .filter(|l| matches!(l, Label::Rule { .. }))
            .count();
        assert_eq!(all.len(), rule_labels, "one label per rule message");
        let rules = queue_rules(&batch);
        assert_eq!(rules.len(), queue_rule_count(&sample()));
        assert_eq!(
            all.len(),
            rules.len() + 1 + 3,
            "plus the conntrack rule and the guard's three without a queue verdict"
        );
        for r in &rules {
            let (name, data) = r.last().unwrap();
            assert_eq!(name, "queue");
            let a = attrs(data);
            // NFTA_QUEUE_NUM/TOTAL/FLAGS: 16-bit, network byte order.
            assert_eq!(attr(&a, 1), Some(&4747u16.to_be_bytes()[..]));
            assert_eq!(attr(&a, 2), Some(&1u16.to_be_bytes()[..]));
            assert_eq!(
                attr(&a, 3),
                Some(&0u16.to_be_bytes()[..]),
                "no bypass, no fanout"
            );
        }
    }

    #[test]
    fn compat_queue_expression_attributes() {
        let (batch, _) = build_install_batch(&sample(), QueueExprKind::Compat);
        let rules = queue_rules(&batch);
        assert_eq!(rules.len(), queue_rule_count(&sample()));
        for r in rules {
            let (name, data) = r.last().unwrap();
            assert_eq!(name, "target");
            let a = attrs(data);
            assert_eq!(cstr(attr(&a, 1).unwrap()), "NFQUEUE");
            assert_eq!(attr(&a, 2), Some(&3u32.to_be_bytes()[..]), "revision 3");
            let info = attr(&a, 3).unwrap();
            assert_eq!(info, &crate::nft::expr::nfqueue_v3_info(4747, 1, 0)[..]);
        }
    }

    fn u32_attr(a: &[(u16, &[u8])], ty: u16) -> Option<u32> {
        attr(a, ty).map(|v| u32::from_be_bytes(v.try_into().unwrap()))
    }

    fn cmp_value(expr: &(String, Vec<u8>)) -> Vec<u8> {
        assert_eq!(expr.0, "cmp");
        let a = attrs(&expr.1);
        let d = attrs(attr(&a, NFTA_CMP_DATA).unwrap());
        attr(&d, NFTA_DATA_VALUE).unwrap().to_vec()
    }

    #[test]
    fn lookup_rule_loads_the_key_into_consecutive_registers() {
        let (batch, _) = build_install_batch(&sample(), QueueExprKind::Native);
        // The `*` service's rule: nfproto guard, key loads, lookup, fib, queue.
        let inbound = &rules(&batch)[0];
        let names: Vec<&str> = inbound.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "meta", "cmp", "meta", "meta", "payload", "lookup", "fib", "cmp", "queue"
            ]
        );
        assert_eq!(cmp_value(&inbound[1]), [libc::NFPROTO_IPV4 as u8]);
        // NFTA_META_DREG 1, NFTA_META_KEY 2.
        let meta = |i: usize| {
            let a = attrs(&inbound[i].1);
            (u32_attr(&a, 2).unwrap(), u32_attr(&a, 1).unwrap())
        };
        assert_eq!(
            meta(2),
            (libc::NFT_META_IIFNAME as u32, 8),
            "16 bytes: 8..=11"
        );
        assert_eq!(meta(3), (libc::NFT_META_L4PROTO as u32, 12));
        // NFTA_PAYLOAD_DREG 1, BASE 2, OFFSET 3, LEN 4.
        let p = attrs(&inbound[4].1);
        assert_eq!(u32_attr(&p, 1), Some(13));
        assert_eq!(
            u32_attr(&p, 2),
            Some(libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32)
        );
        assert_eq!((u32_attr(&p, 3), u32_attr(&p, 4)), (Some(2), Some(2)));
        // NFTA_LOOKUP_SET 1, SREG 2, SET_ID 4.
        let l = attrs(&inbound[5].1);
        assert_eq!(cstr(attr(&l, 1).unwrap()), "in4_local");
        assert_eq!(u32_attr(&l, 2), Some(libc::NFT_REG_1 as u32));
        assert_eq!(u32_attr(&l, 4), Some(set_id(SetKind::In4Local, true)));
        let fib = attrs(&inbound[6].1);
        // NFTA_FIB_DREG, NFTA_FIB_RESULT (addrtype), NFTA_FIB_FLAGS (daddr | iif).
        assert_eq!(attr(&fib, 1), Some(&1u32.to_be_bytes()[..]));
        assert_eq!(attr(&fib, 2), Some(&3u32.to_be_bytes()[..]));
        assert_eq!(attr(&fib, 3), Some(&(2u32 | 8).to_be_bytes()[..]));
        assert_eq!(
            cmp_value(&inbound[7]),
            2u32.to_ne_bytes(),
            "RTN_LOCAL, native order"
        );
    }

    #[test]
    fn icmp_rules_keep_plain_compares() {
        let (batch, _) = build_install_batch(&sample(), QueueExprKind::Native);
        let icmp = &rules(&batch)[1];
        let names: Vec<&str> = icmp.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "meta", "cmp", "meta", "cmp", "fib", "cmp", "meta", "cmp", "payload", "cmp",
                "queue"
            ]
        );
        let mut ifname = b"ppp0".to_vec();
        ifname.resize(16, 0);
        assert_eq!(
            cmp_value(&icmp[1]),
            ifname,
            "interface name zero-padded to IFNAMSIZ"
        );
        assert_eq!(cmp_value(&icmp[7]), [1], "ICMP");
        assert_eq!(cmp_value(&icmp[9]), [3], "destination unreachable");
    }

    #[test]
    fn conntrack_rule_is_ct_state_new_without_verdict() {
        let (batch, labels) = build_install_batch(&sample(), QueueExprKind::Native);
        let all = rules(&batch);
        // The table's last rule; the guard's five follow it.
        let ct = &all[all.len() - 6];
        let names: Vec<&str> = ct.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ct", "bitwise", "cmp"], "no verdict expression");
        let rule_labels: Vec<&Label> = labels
            .iter()
            .filter(|l| matches!(l, Label::Rule { .. }))
            .collect();
        match rule_labels[rule_labels.len() - 6] {
            Label::Rule {
                chain,
                text,
                queues,
            } => {
                assert_eq!(*chain, "conntrack");
                assert!(text.starts_with("ct state new comment "), "{text}");
                assert!(!queues);
            }
            l => panic!("{l:?}"),
        }
        // The chain message has no hook.
        let msgs = messages(&batch);
        let chain = msgs
            .iter()
            .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWCHAIN as u16)
            .map(|(_, _, a)| a.clone())
            .find(|a| cstr(attr(&attrs(a), 3).unwrap()) == "conntrack")
            .expect("conntrack chain");
        // NFTA_CHAIN_HOOK 4.
        assert_eq!(attr(&attrs(&chain), 4), None);
    }

    #[test]
    fn guard_rules_in_their_own_unowned_table_in_the_same_batch() {
        let p = sample().with_mark(0x4e00);
        let (batch, labels) = build_install_batch(&p, QueueExprKind::Native);
        let msgs = messages(&batch);
        // Both tables are added; only netnat's carries the owner flag (NFTA_TABLE_FLAGS 2).
        let tables: Vec<(String, Option<Vec<u8>>)> = msgs
            .iter()
            .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWTABLE as u16)
            .map(|(_, _, a)| {
                let a = attrs(a);
                (
                    cstr(attr(&a, 1).unwrap()).to_string(),
                    attr(&a, 2).map(<[u8]>::to_vec),
                )
            })
            .collect();
        assert_eq!(
            tables,
            [
                (
                    "netnat".to_string(),
                    Some(NFT_TABLE_F_OWNER.to_be_bytes().to_vec())
                ),
                ("netnat_guard".to_string(), None),
            ]
        );
        assert!(labels.contains(&Label::FlushRules(GUARD_TABLE)));
        let all = rules(&batch);
        let guard = &all[all.len() - 5..];
        let names =
            |r: &[(String, Vec<u8>)]| -> Vec<String> { r.iter().map(|(n, _)| n.clone()).collect() };
        // flows: mark & M == M, ct direction original, label bit 127 set.
        assert_eq!(
            names(&guard[0]),
            ["meta", "bitwise", "cmp", "ct", "cmp", "immediate", "ct"]
        );
        assert_eq!(cmp_value(&guard[0][2]), 0x4e00u32.to_ne_bytes());
        assert_eq!(cmp_value(&guard[0][4]), [0], "IP_CT_DIR_ORIGINAL");
        // Translated ICMP errors that conntrack relates to nothing go back to the queue.
        for (r, proto) in [(&guard[1], 1u8), (&guard[2], 58)] {
            let queued = [
                "meta", "bitwise", "cmp", "meta", "cmp", "ct", "bitwise", "cmp", "queue",
            ];
            assert_eq!(names(r), queued);
            assert_eq!(cmp_value(&r[4]), [proto]);
        }
        // replies_clear: reply, label, then mark & ~M written back.
        let clear = [
            "ct", "cmp", "ct", "bitwise", "cmp", "meta", "bitwise", "meta",
        ];
        assert_eq!(names(&guard[3]), clear);
        assert_eq!(cmp_value(&guard[3][1]), [1], "IP_CT_DIR_REPLY");
        assert_eq!(cmp_value(&guard[3][4]), [0u8; 16], "label test: non-zero");
        // replies_guard: reply, label, mark lacks M, drop.
        let drop = [
            "ct",
            "cmp",
            "ct",
            "bitwise",
            "cmp",
            "meta",
            "bitwise",
            "cmp",
            "immediate",
        ];
        assert_eq!(names(&guard[4]), drop);
        assert_eq!(cmp_value(&guard[4][7]), 0x4e00u32.to_ne_bytes());
    }

    #[test]
    fn label_127_is_the_top_bit_of_the_last_word() {
        let b = super::super::expr::ct_label_bytes(127);
        assert_eq!(&b[12..], &0x8000_0000u32.to_ne_bytes());
        assert!(b[..12].iter().all(|&x| x == 0));
        let b = super::super::expr::ct_label_bytes(0);
        assert_eq!(&b[..4], &1u32.to_ne_bytes());
    }

    /// The key of a one-element set, as the batch encodes it.
    fn element_key(kind: SetKind, values: &[KeyValue]) -> Vec<u8> {
        let set = SetSpec::from_values(kind, &[values.to_vec()]);
        let mut out = Vec::new();
        push_element_key(&mut out, &set, &set.raw()[0]);
        out
    }

    #[test]
    fn element_keys_are_padded_per_component() {
        let k = element_key(
            SetKind::In4,
            &[
                KeyValue::IfName("pub0".into()),
                KeyValue::Addr("10.99.1.1".parse().unwrap()),
                KeyValue::Proto(6),
                KeyValue::Port(80),
            ],
        );
        let mut want = b"pub0".to_vec();
        want.resize(16, 0);
        want.extend([10, 99, 1, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(k, want, "the layout nft itself sends (nft --debug=netlink)");
        let k = element_key(
            SetKind::Out6,
            &[
                KeyValue::IfName("ppp0".into()),
                KeyValue::Addr("fd00::10".parse().unwrap()),
                KeyValue::Proto(17),
                KeyValue::Port(4443),
            ],
        );
        assert_eq!(k.len(), key_len(SetKind::Out6.key()));
        assert_eq!(&k[16..18], &[0xfd, 0]);
        assert_eq!(&k[32..40], &[17, 0, 0, 0, 0x11, 0x5b, 0, 0]);
        let k = element_key(
            SetKind::In4Local,
            &[
                KeyValue::IfName("ppp0".into()),
                KeyValue::Proto(17),
                KeyValue::Port(53),
            ],
        );
        assert_eq!(&k[16..], &[17, 0, 0, 0, 0, 53, 0, 0]);
    }

    /// A raw key for libnftnl's own element encoding, the reference of the test below.
    struct RawKey(Vec<u8>);

    impl SetKey for RawKey {
        const TYPE: u32 = 0;
        const LEN: u32 = 0;

        fn data(&self) -> Box<[u8]> {
            self.0.clone().into_boxed_slice()
        }
    }

    /// Zeroes the padding after each attribute in `b`, nested ones included (libmnl leaves
    /// whatever the buffer held there).
    fn zero_padding(b: &mut [u8]) {
        let mut off = 0;
        while off + 4 <= b.len() {
            let len = u16_at(b, off).unwrap() as usize;
            let ty = u16_at(b, off + 2).unwrap();
            assert!(len >= 4 && off + len <= b.len(), "malformed attribute");
            if ty & 0x8000 != 0 {
                zero_padding(&mut b[off + 4..off + len]);
            }
            let end = (off + len.next_multiple_of(4)).min(b.len());
            b[off + len..end].fill(0);
            off += len.next_multiple_of(4);
        }
    }

    /// Every message of a batch, whole (header included), padding zeroed.
    fn raw_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= bytes.len() {
            let len = u32_at(bytes, off).unwrap() as usize;
            let mut m = bytes[off..off + len].to_vec();
            zero_padding(&mut m[20..]);
            out.push(m);
            off += len.next_multiple_of(4);
        }
        out
    }

    #[test]
    fn element_messages_are_byte_for_byte_libnftnl_s() {
        // Enough elements for several messages, over every key layout.
        for kind in SetKind::ALL {
            let values: Vec<Vec<KeyValue>> = (0..4000u16)
                .map(|i| {
                    kind.key()
                        .iter()
                        .map(|f| match f {
                            KeyField::IifName | KeyField::OifName => {
                                KeyValue::IfName(format!("if{}", i % 3))
                            }
                            KeyField::Daddr(Family::Ipv4) | KeyField::Saddr(Family::Ipv4) => {
                                KeyValue::Addr(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]))
                            }
                            KeyField::Daddr(Family::Ipv6) | KeyField::Saddr(Family::Ipv6) => {
                                KeyValue::Addr(IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 1, i]))
                            }
                            KeyField::L4Proto => KeyValue::Proto(if i % 2 == 0 { 6 } else { 17 }),
                            KeyField::Dport | KeyField::Sport => KeyValue::Port(i),
                        })
                        .collect()
                })
                .collect();
            let spec = SetSpec::from_values(kind, &values);
            let table_name = CString::new("netnat").unwrap();
            let table = Table::new(&table_name, ProtoFamily::Inet);

            let mut ours = Batch::new();
            for elements in spec.raw().chunks(elements_per_msg(kind)) {
                let msg = ElementsMsg {
                    table: &table_name,
                    set: &spec,
                    elements,
                    id: 42,
                };
                ours.add(&msg, MsgType::Add);
            }
            let ours: Vec<u8> = ours.finalize().iter().flatten().copied().collect();

            let name = CString::new(kind.name()).unwrap();
            let mut set = Set::<RawKey>::new_named(&name, 42, &table, ProtoFamily::Inet);
            for e in spec.raw() {
                let mut key = Vec::new();
                push_element_key(&mut key, &spec, e);
                set.add(&RawKey(key));
            }
            let mut theirs = Batch::new();
            for msg in set.elems_iter() {
                theirs.add(&msg, MsgType::Add);
            }
            let theirs: Vec<u8> = theirs.finalize().iter().flatten().copied().collect();

            let (ours, theirs) = (raw_messages(&ours), raw_messages(&theirs));
            assert!(ours.len() > 3, "{kind:?}: {} messages", ours.len());
            assert_eq!(ours.len(), theirs.len(), "{kind:?}: message count");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(a == b, "{kind:?}: message {i} differs from libnftnl's");
            }
        }
    }

    #[test]
    fn sets_are_created_filled_or_deleted() {
        const NFTA_SET_TABLE: u16 = 1;
        const NFTA_SET_NAME: u16 = 2;
        const NFTA_SET_KEY_TYPE: u16 = 4;
        const NFTA_SET_KEY_LEN: u16 = 5;
        const NFTA_SET_ELEM_LIST_SET: u16 = 2;
        const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
        let (batch, labels) = build_install_batch(&sample(), QueueExprKind::Native);
        let msgs = messages(&batch);
        assert_eq!(msgs.len(), labels.len());
        let mut seen = Vec::new();
        for ((ty, _, a), label) in msgs.iter().zip(&labels) {
            let a = attrs(a);
            match label {
                Label::Set(n) => {
                    assert_eq!(*ty, libc::NFT_MSG_NEWSET as u16);
                    assert_eq!(cstr(attr(&a, NFTA_SET_TABLE).unwrap()), "netnat");
                    assert_eq!(cstr(attr(&a, NFTA_SET_NAME).unwrap()), *n);
                    let kind = SetKind::ALL.into_iter().find(|k| k.name() == *n).unwrap();
                    assert_eq!(
                        u32_attr(&a, NFTA_SET_KEY_TYPE),
                        Some(concat_type(kind.key()))
                    );
                    assert_eq!(
                        u32_attr(&a, NFTA_SET_KEY_LEN),
                        Some(key_len(kind.key()) as u32)
                    );
                    seen.push(format!("new {n}"));
                }
                Label::Elements(n) => {
                    assert_eq!(*ty, libc::NFT_MSG_NEWSETELEM as u16);
                    assert_eq!(cstr(attr(&a, NFTA_SET_ELEM_LIST_SET).unwrap()), *n);
                    let list = attrs(attr(&a, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap());
                    seen.push(format!("{} in {n}", list.len()));
                }
                Label::DelSet(n) => {
                    assert_eq!(*ty, libc::NFT_MSG_DELSET as u16);
                    seen.push(format!("del {n}"));
                }
                _ => {}
            }
        }
        assert_eq!(
            seen,
            [
                "new in4",
                "del in4",
                "new in4_local",
                "del in4_local",
                "new in6",
                "del in6",
                "new in6_local",
                "del in6_local",
                "new out4",
                "del out4",
                "new out6",
                "del out6",
                "new icmp_in4",
                "del icmp_in4",
                "new icmp_in6",
                "del icmp_in6",
                "new in4_local",
                "1 in in4_local",
                "new out4",
                "1 in out4",
            ]
        );
    }

    #[test]
    fn thousands_of_elements_take_few_messages() {
        let services: Vec<Service> = (0..10_000u16)
            .map(|i| Service {
                iface: "pub0".into(),
                app_addr: AppAddr::Fixed("10.99.1.1".parse().unwrap()),
                app_port: i,
                protocol: Protocol::Tcp,
                act_addr: "192.168.77.10".parse().unwrap(),
                act_port: i,
                flags: Flags(0),
            })
            .collect();
        let policy = Policy::new(&services, 1);
        let (batch, labels) = build_install_batch(&policy, QueueExprKind::Native);
        let element_msgs = labels
            .iter()
            .filter(|l| matches!(l, Label::Elements(_)))
            .count();
        // 28-byte keys, 10,000 in each of 2 sets: well over 500 elements per 64 KiB message.
        assert!(
            (3..=40).contains(&element_msgs),
            "{element_msgs} element messages"
        );
        assert!(labels.len() < 100, "{} messages", labels.len());
        assert_eq!(
            batch.iter().count(),
            1,
            "the batch is sized to fit one page"
        );

        // Decoded, the element messages give back every key of every set, in order.
        const NFTA_SET_ELEM_LIST_SET: u16 = 2;
        const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
        let mut got: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for (ty, _, a) in messages(&batch) {
            if ty != libc::NFT_MSG_NEWSETELEM as u16 {
                continue;
            }
            assert!(a.len() <= u16::MAX as usize + 64, "{} bytes", a.len());
            let a = attrs(&a);
            let set = cstr(attr(&a, NFTA_SET_ELEM_LIST_SET).unwrap()).to_string();
            let keys = attrs(attr(&a, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap())
                .into_iter()
                .map(|(_, elem)| {
                    let elem = attrs(elem);
                    assert_eq!(elem.len(), 1, "the key alone");
                    let key = attrs(attr(&elem, NFTA_SET_ELEM_KEY).unwrap());
                    attr(&key, NFTA_DATA_VALUE).unwrap().to_vec()
                })
                .collect();
            match got.last_mut() {
                Some((name, all)) if *name == set => all.extend::<Vec<_>>(keys),
                _ => got.push((set, keys)),
            }
        }
        let want: Vec<(String, Vec<Vec<u8>>)> = policy
            .sets
            .iter()
            .map(|s| {
                let keys = s
                    .raw()
                    .iter()
                    .map(|e| {
                        let mut k = Vec::new();
                        push_element_key(&mut k, s, e);
                        k
                    })
                    .collect();
                (s.kind.name().to_string(), keys)
            })
            .collect();
        assert_eq!(
            got.iter()
                .map(|(n, k)| (n.as_str(), k.len()))
                .collect::<Vec<_>>(),
            [("in4", 10_000), ("out4", 10_000), ("icmp_in4", 1)]
        );
        assert!(got == want, "keys differ");
        // The keys are the services' own, not just consistent with the policy.
        let mut first = b"pub0".to_vec();
        first.resize(16, 0);
        first.extend([10, 99, 1, 1, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(got[0].1[0], first);
        assert_eq!(&got[0].1[9999][24..26], &9999u16.to_be_bytes());
    }

    #[test]
    fn table_has_owner_flag_and_flush_names_only_the_table() {
        let (batch, labels) = build_install_batch(&sample(), QueueExprKind::Native);
        let msgs = messages(&batch);
        assert_eq!(msgs.len(), labels.len());
        let (ty, _, a) = &msgs[0];
        assert_eq!(*ty, libc::NFT_MSG_NEWTABLE as u16);
        let a = attrs(a);
        assert_eq!(cstr(attr(&a, NFTA_TABLE_NAME).unwrap()), "netnat");
        assert_eq!(attr(&a, NFTA_TABLE_FLAGS), Some(&2u32.to_be_bytes()[..]));
        for m in &msgs[1..4] {
            assert_eq!(m.0, libc::NFT_MSG_NEWCHAIN as u16);
        }
        let (ty, _, a) = &msgs[4];
        assert_eq!(*ty, libc::NFT_MSG_DELRULE as u16);
        let a = attrs(a);
        assert_eq!(cstr(attr(&a, NFTA_RULE_TABLE).unwrap()), "netnat");
        assert_eq!(attr(&a, NFTA_RULE_CHAIN), None, "flush covers every chain");
        // Every set message comes after the rule flush (which releases the sets) and before
        // the first rule (which references them).
        let first_rule = labels
            .iter()
            .position(|l| matches!(l, Label::Rule { .. }))
            .unwrap();
        for (i, l) in labels.iter().enumerate() {
            if matches!(l, Label::Set(_) | Label::Elements(_) | Label::DelSet(_)) {
                assert!(i > 4 && i < first_rule, "{l:?} at {i}");
            }
        }
        assert!(
            msgs.iter()
                .all(|(_, flags, _)| flags & libc::NLM_F_ACK as u16 != 0),
            "every message asks for an ACK, so silence is detectable"
        );
    }

    fn ack(seq: u32, error: i32) -> Answer {
        Answer {
            seq,
            error,
            message: None,
        }
    }

    fn labels() -> Vec<Label> {
        vec![
            Label::Table(TABLE_NAME),
            Label::Chain("prerouting"),
            Label::Rule {
                chain: "prerouting",
                text: "x".into(),
                queues: true,
            },
        ]
    }

    #[test]
    fn judge_maps_sequence_numbers_to_messages() {
        // With numbered begin/end: 1 = begin, 2..=4 objects, 5 = end.
        let all_ok: Vec<Answer> = (1..6).map(|s| ack(s, 0)).collect();
        assert!(judge(1..6, labels(), &all_ok).is_ok());
        let mut a = all_ok.clone();
        a[3].error = -libc::ENOENT;
        a[2].error = 0;
        let f = judge(1..6, labels(), &a).unwrap_err();
        assert!(matches!(f.label, Label::Rule { .. }) && f.errno == libc::ENOENT);
        // The earliest refusal is the cause.
        a[1].error = -libc::EPERM;
        let f = judge(1..6, labels(), &a).unwrap_err();
        assert_eq!(f.label, Label::Table(TABLE_NAME));
        assert!(matches!(f.into_error(), NftError::OwnedByOther));
        // EPERM on the batch itself: no CAP_NET_ADMIN.
        let f = judge(1..6, labels(), &[ack(1, -libc::EPERM)]).unwrap_err();
        assert!(matches!(f.into_error(), NftError::NotPermitted));
        // A missing ACK is an error, not a success.
        let f = judge(1..6, labels(), &all_ok[..4]).unwrap_err();
        assert!(matches!(f.into_error(), NftError::Protocol(_)));
        // Without numbered begin/end (kernels before 6.10): objects are 1..=3.
        let objs: Vec<Answer> = (1..4).map(|s| ack(s, 0)).collect();
        assert!(judge(1..4, labels(), &objs).is_ok());
        let f = judge(1..4, labels(), &[ack(1, 0), ack(2, -libc::EOPNOTSUPP)]).unwrap_err();
        assert_eq!(f.label, Label::Chain("prerouting"));
        let e = f.into_error();
        assert!(e.to_string().contains("adding chain prerouting"), "{e}");
    }

    #[test]
    fn parses_error_with_extended_ack_message() {
        let mut m = Vec::new();
        let text = b"Table is owned\0";
        let attr_len = 4 + text.len();
        let total = 16 + 4 + 16 + attr_len.next_multiple_of(4);
        m.extend((total as u32).to_ne_bytes());
        m.extend((libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend((NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        m.extend(9u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend((-libc::EPERM).to_ne_bytes());
        // The original header (capped: no payload), its seq at offset 8.
        m.extend(60u32.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(7u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend((attr_len as u16).to_ne_bytes());
        m.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        m.extend(text);
        m.resize(total, 0);
        let a = parse_error_msg(&m).unwrap();
        assert_eq!(a.seq, 7);
        assert_eq!(a.error, -libc::EPERM);
        assert_eq!(a.message.as_deref(), Some("Table is owned"));
    }
}
