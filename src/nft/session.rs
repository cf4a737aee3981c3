//! The nftables session: one netlink socket for the life of the table it owns, the exchange
//! of a batch (send it whole, collect every answer, judge them) and the few requests made
//! outside a batch (is the guard there?).
//!
//! The table carries `NFT_TABLE_F_OWNER`: the kernel ties it to the socket that created it,
//! deletes it when that socket closes (crash-safe cleanup) and refuses changes from any other
//! socket with EPERM. That is why the session keeps its one socket for its whole life.
//!
//! May use: [`crate::netlink`] for the socket and the framing, `batch` for what is sent.
//! Nothing here touches anything but tables `inet netnat` and `inet netnat_guard`.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use nftnl::{FinalizedBatch, ProtoFamily};

use super::batch::{self, QueueExprKind};
use super::error::{Failure, Label, NftError};
use super::expr::IFNAMSIZ;
use super::guard::GUARD_TABLE;
use super::policy::{Policy, TABLE_NAME};
use super::rules::{Match, Verdict};
use crate::netlink::socket::{NETLINK_CAP_ACK, NETLINK_EXT_ACK, SOL_NETLINK};
use crate::netlink::{Buffer, ErrorMsg, Socket, ack, frame};

/// Room reserved in the receive buffer per acknowledged message. An ACK is a small skb whose
/// accounted size (truesize) stays well below this; if the buffer overflows the kernel drops
/// ACKs and we could not tell success from failure.
const RCVBUF_PER_MSG: usize = 2048;

/// One receive: capped ACKs are small, and a datagram holds many of them.
const RECV_BUF: usize = 64 * 1024;

/// One nftables netlink socket, kept for the life of the table it owns.
///
/// The socket is netnat's own [`Socket`], close-on-exec from its creation: a child process (a
/// hook script, or just `ip netns exec nft` started by another thread) that inherited it would
/// keep the owned table alive, owned by a dead session, for as long as it runs.
pub struct NftSession {
    sock: Socket,
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

impl NftSession {
    /// Open and bind the netfilter netlink socket this session keeps.
    pub fn open() -> Result<NftSession, NftError> {
        let sock = Socket::open(libc::NETLINK_NETFILTER, false, 0).map_err(|e| NftError::Io {
            op: "socket",
            source: e,
        })?;
        // Both options are optional refinements: capped ACKs keep the receive buffer small,
        // extended ACKs may carry the kernel's reason. Older kernels lack them; ignore failure.
        let _ = sock.set_option(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = sock.set_option(SOL_NETLINK, NETLINK_EXT_ACK, 1);
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
        let io = |(op, source)| NftError::Io { op, source };
        self.discard_pending().map_err(io)?;
        let msg = get_table_msg(GUARD_TABLE, 1);
        self.sock.send(&msg).map_err(|e| io(("sendmsg", e)))?;
        let answers = self.receive_answers().map_err(io)?;
        match answers.iter().find(|a| a.seq == 1).map(|a| a.errno) {
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

    /// Delete table `inet netnat` (and with it everything netnat installed; the guard stays:
    /// what a stopping netnat does). An absent table is fine.
    pub fn remove(&mut self) -> Result<(), NftError> {
        delete_if_present(self, TABLE_NAME).map(|_| ())
    }

    /// Throws away whatever is waiting on the socket.
    fn discard_pending(&self) -> Result<(), (&'static str, io::Error)> {
        let mut buf = vec![0u8; RECV_BUF];
        self.sock.discard_pending(&mut buf).map_err(|e| ("recv", e))
    }

    /// Collects every answer queued for us. nfnetlink processes a batch synchronously inside
    /// `sendmsg` (module loading and replays included), so when `sendmsg` has returned, all
    /// answers are already queued and a non-blocking read until EAGAIN sees them all.
    fn receive_answers(&self) -> Result<Vec<Answer>, (&'static str, io::Error)> {
        let mut buf = vec![0u8; RECV_BUF];
        let mut out = Vec::new();
        loop {
            let got = match self.sock.recv(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(("recv", e)),
            };
            let bytes = &buf[..got.len];
            for f in frame::messages(bytes) {
                let f = f.map_err(|e| ("parse", io::Error::new(io::ErrorKind::InvalidData, e)))?;
                if let Some(a) = ack::parse(bytes, &f).and_then(Answer::from_error) {
                    out.push(a);
                }
            }
        }
    }

    fn install_with(&mut self, policy: &Policy, kind: QueueExprKind) -> Result<(), Failure> {
        let (batch, labels) = batch::install(policy, kind);
        self.run(&batch, labels)
    }

    /// Send one finalized batch and collect every answer to it.
    fn run(&mut self, batch: &FinalizedBatch, labels: Vec<Label>) -> Result<(), Failure> {
        // Answers left over from an earlier, interrupted exchange would be taken for ours.
        self.discard_pending().map_err(Failure::io)?;

        let pages: Vec<&[u8]> = batch.iter().collect();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let seqs = batch.sequence_numbers();
        let want_rcv = (seqs.len() + 2) * RCVBUF_PER_MSG;
        if want_rcv > self.rcvbuf {
            // Falls back silently to the default buffer if not privileged; then a big batch may
            // lose ACKs, which is detected below.
            let _ = self.sock.set_buffer(Buffer::Receive, want_rcv);
            self.rcvbuf = want_rcv;
        }
        // netlink refuses a message larger than the send buffer (EMSGSIZE), and a batch must go
        // in one sendmsg: the kernel aborts a batch whose end is not in the same skb.
        let want_snd = total + 4096;
        if want_snd > self.sndbuf && want_snd > 200_000 {
            let _ = self.sock.set_buffer(Buffer::Send, want_snd);
            self.sndbuf = want_snd;
        }
        self.sock
            .send_parts(&pages)
            .map_err(|e| Failure::io(("sendmsg", e)))?;
        let answers = self.receive_answers().map_err(Failure::io)?;
        judge(seqs, labels, &answers)
    }
}

fn check_names(policy: &Policy) -> Result<(), NftError> {
    let bad = |n: &str| n.is_empty() || n.len() >= IFNAMSIZ || n.contains('\0');
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
    const NFTA_TABLE_NAME: u16 = 1;
    let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_GETTABLE as u16;
    let mut m = Vec::with_capacity(64);
    let start = frame::put_header(&mut m, ty, frame::NLM_F_REQUEST | frame::NLM_F_ACK, seq);
    // nfgenmsg: family, version, resource id (network order).
    m.push(ProtoFamily::Inet as u8);
    m.push(libc::NFNETLINK_V0 as u8);
    m.extend_from_slice(&0u16.to_be_bytes());
    frame::put_str(&mut m, NFTA_TABLE_NAME, name);
    frame::finish(&mut m, start);
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
        // One table absent aborts the whole batch; the other is then deleted alone.
        Err(f) => match absent_table(&f) {
            Some(TABLE_NAME) => delete_if_present(&mut s, GUARD_TABLE),
            // netnat's table was there (its delete came first and passed): it must go now.
            Some(GUARD_TABLE) => delete_tables(&mut s, &[TABLE_NAME])
                .map(|()| true)
                .map_err(Failure::into_error),
            _ => Err(f.into_error()),
        },
    }
}

/// Delete `table` alone; whether it existed.
fn delete_if_present(s: &mut NftSession, table: &'static str) -> Result<bool, NftError> {
    match delete_tables(s, &[table]) {
        Ok(()) => Ok(true),
        Err(f) if absent_table(&f).is_some() => Ok(false),
        Err(f) => Err(f.into_error()),
    }
}

/// The table whose absence made a delete batch fail, if that is why it failed.
fn absent_table(f: &Failure) -> Option<&'static str> {
    match f.label {
        Label::DelTable(table) if f.errno == libc::ENOENT => Some(table),
        _ => None,
    }
}

/// Delete `tables` in one batch (all or none).
fn delete_tables(s: &mut NftSession, tables: &[&'static str]) -> Result<(), Failure> {
    let (batch, labels) = batch::delete_tables(tables);
    s.run(&batch, labels)
}

/// One NLMSG_ERROR answer: the sequence number it answers, 0 or the errno, and the
/// extended-ACK message if the kernel gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    seq: u32,
    errno: i32,
    message: Option<String>,
}

impl Answer {
    /// An answer needs the echoed header: without its sequence number it answers nothing.
    fn from_error(e: ErrorMsg) -> Option<Answer> {
        Some(Answer {
            seq: e.seq?,
            errno: e.errno,
            message: e.message,
        })
    }
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
    let mut errors: Vec<&Answer> = answers.iter().filter(|a| a.errno != 0).collect();
    errors.sort_by_key(|a| (a.seq == 0, a.seq));
    if let Some(a) = errors.first() {
        return Err(Failure {
            label: label_of(a.seq),
            errno: a.errno,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as the kernel sends it: `error` 0 or a negative errno.
    fn ack(seq: u32, error: i32) -> Answer {
        Answer {
            seq,
            errno: -error,
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
        a[3].errno = libc::ENOENT;
        a[2].errno = 0;
        let f = judge(1..6, labels(), &a).unwrap_err();
        assert!(matches!(f.label, Label::Rule { .. }) && f.errno == libc::ENOENT);
        // The earliest refusal is the cause.
        a[1].errno = libc::EPERM;
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
    fn get_table_request_names_the_table() {
        let m = get_table_msg("netnat_guard", 5);
        let f = frame::messages(&m).next().unwrap().unwrap();
        assert_eq!(f.header.seq, 5);
        assert_eq!(f.header.flags, frame::NLM_F_REQUEST | frame::NLM_F_ACK);
        let a = frame::attrs(&m, f.body.start + 4, f.body.end)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.ty, frame::c_string(&m[a.value])),
            (1, "netnat_guard".into())
        );
    }
}
