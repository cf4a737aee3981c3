//! NFQUEUE consumer layer: bind, receive in batches, verdicts with payloads.
//!
//! One [`Queue`] is one bound queue on its own netlink socket. The daemon runs one thread per
//! queue: `wait` for readability, then `receive_batch`, which receives every packet waiting
//! (up to [`BATCH`] datagrams in one `recvmmsg`), `decide`, which hands each to the caller's
//! handler with its payload still in the receive buffer, and `send_verdicts`, which returns all
//! their verdicts in one `sendmsg` (payloads as their own iovecs, straight from the receive
//! buffer).
//!
//! Why our own layer and not the `nfq` crate (0.2.5 gives no access to its socket): we need the fd (socket buffer
//! size, poll), configuration that does not throw packets away, and several verdicts per
//! system call. The wire format lives in [`msg`], free of I/O; the socket and the netlink
//! framing are [`crate::netlink`]'s.

mod area;
pub mod msg;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::netlink::socket::{self, NETLINK_CAP_ACK, NETLINK_NO_ENOBUFS, SOL_NETLINK, iovec};
use crate::netlink::{Buffer, Socket};
pub use msg::PacketMeta;
use msg::{Message, PacketMsg};

/// Datagrams fetched per `recvmmsg`, and so the most packets handled per batch.
/// Every one needs a receive buffer for the largest packet ([`DGRAM_BUF`], 68 KiB), resident
/// once a burst has filled it: 32 keep a queue's buffers at 2.2 MiB, so that one queue per
/// CPU stays small, while a batch still spreads each system call over 32 packets.
pub const BATCH: usize = 32;

/// Receive buffer per datagram: the largest packet message (copy range 65531, see
/// [`msg::MAX_PAYLOAD`]) plus its headers and the attributes we get alongside, with room to
/// spare so that a full-size packet is never cut (MSG_TRUNC).
const DGRAM_BUF: usize = 65536 + 4096;

/// How long `open` waits for the kernel's acknowledgement of the bind.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sequence number of the bind/config request, to match its acknowledgement.
const CONFIG_SEQ: u32 = 1;

/// Room left below the socket's send buffer when cutting verdicts into `sendmsg` calls:
/// netlink refuses a message longer than `sk_sndbuf - 32` (EMSGSIZE).
const SNDBUF_SLACK: usize = 64;

#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Queue number (the `queue num N` of the rule).
    pub num: u16,
    /// Socket receive buffer in bytes. With the default 208 KiB a 3000-packet burst lost 2668
    /// packets when measured; with 8 MiB none.
    pub rcvbuf: usize,
    /// Kernel queue length limit (`NFQA_CFG_QUEUE_MAXLEN`); packets beyond it are dropped
    /// (or bypass the queue with a `bypass` rule).
    pub max_len: u32,
    /// Ask for GSO super-packets (`NFQA_CFG_F_GSO`) instead of having the kernel segment them
    /// first: far fewer packets per byte. Such packets may arrive "checksum not ready".
    pub gso: bool,
    /// Bytes of each packet copied to us (`NFQNL_COPY_PACKET` range): [`COPY_WHOLE`] for
    /// full-payload verdicts; [`COPY_HEADERS`] for header-only verdicts, where a longer packet
    /// arrives truncated and the kernel applies the rewrite netnat decided (see
    /// `nft::rewrite`).
    pub copy_range: u32,
}

/// Copy range meaning "the whole packet"; the kernel clamps it to what fits an attribute.
pub const COPY_WHOLE: u32 = 0xffff;

/// Copy range of the header-only path. Why 1280: every ICMP error netnat translates must
/// arrive whole (its quote is rewritten, and a truncated packet never gets a payload back);
/// RFC 4443 caps an ICMPv6 error at the IPv6 minimum MTU, 1280 bytes, and IPv4 routers and
/// hosts quote at most 576 bytes (RFC 1812, Linux's `icmp_send`). So errors are whole with the
/// same queues as the rest, without queues of their own; a longer, truncated error is
/// non-standard and dropped and counted (`Refusal::Truncated`). SYNs, ACKs, small UDP and
/// everything else up to 1280 bytes keep full-payload verdicts from the Rust core.
pub const COPY_HEADERS: u32 = 1280;

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            num: 0,
            rcvbuf: 8 << 20,
            max_len: 8192,
            gso: true,
            copy_range: COPY_WHOLE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Send the (rewritten in place) payload back with the verdict.
    pub modified: bool,
    /// Set the packet mark.
    pub mark: Option<u32>,
}

impl std::ops::Deref for Packet<'_> {
    type Target = PacketMeta;
    fn deref(&self) -> &PacketMeta {
        &self.meta
    }
}

impl std::ops::DerefMut for Packet<'_> {
    fn deref_mut(&mut self) -> &mut PacketMeta {
        &mut self.meta
    }
}

impl Packet<'_> {
    /// The packet's length in bytes: the payload's, or for a truncated packet its length
    /// before the copy range cut it (what counters count).
    pub fn len(&self) -> usize {
        self.orig_len.map_or(self.payload.len(), |l| l as usize)
    }

    /// Never true for a queued packet (it has at least an IP header); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A queued packet handed to the [`Queue::decide`] handler.
#[derive(Debug)]
pub struct Packet<'a> {
    /// Id, hook, interfaces, mark (read through `Deref`: `pkt.hook`).
    pub meta: PacketMeta,
    /// False when `NFQA_SKB_INFO` has CSUMNOTREADY: the L4 checksum field holds only the
    /// pseudo-header seed, so an incremental update would be wrong.
    pub checksum_ready: bool,
    /// The packet is a GSO super-packet (larger than the MTU).
    pub gso: bool,
    /// The payload is shorter than the packet (`NFQA_CAP_LEN`, the original length, is larger
    /// than what was copied). A payload is never returned for such a packet: it would cut it.
    pub truncated: bool,
    /// The packet's length as the kernel reported it (`NFQA_CAP_LEN`), when the payload is
    /// shorter (truncated); see [`Packet::len`].
    pub orig_len: Option<u32>,
    /// The packet from its network header on, in the receive buffer (zero copy). Rewrite it in
    /// place and return `modified: true`.
    pub payload: &'a mut [u8],
}

#[derive(Default, Clone, Debug)]
pub struct QueueStats {
    /// Packet messages received.
    pub received: u64,
    /// Verdicts handed to the kernel.
    pub verdicts: u64,
    /// Times the kernel reported it had to drop messages for us (socket buffer full).
    pub enobufs: u64,
    /// `NLMSG_ERROR`s for earlier requests (e.g. a verdict for an id the kernel no longer
    /// has), plus received messages that could not be decoded.
    pub async_errors: u64,
    /// Packets the handler modified whose payload cannot go back (truncated, longer than the
    /// copy range): dropped. Accepting the original instead would pass, for a reply, the
    /// private address it was to hide.
    pub failed_closed: u64,
    /// Packets whose verdict `sendmsg` failed (after its retries): sent again as DROP without
    /// payload, rather than left in the kernel queue until unbind.
    pub send_failed_dropped: u64,
    /// Packets whose verdict could not be sent at all, not even that DROP; the kernel holds
    /// them until the queue is unbound (then drops them, or passes them with `bypass`).
    pub verdicts_lost: u64,
    /// Header-only verdicts: truncated packets accepted without payload, with a mark (the
    /// kernel's rewrite chain applies the rewrite the mark asks for).
    pub header_only: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Another socket (usually another process) holds the queue number.
    #[error("queue {num} is already bound by another process")]
    AlreadyBound { num: u16 },
    /// The kernel refused with EPERM and the queue is not bound elsewhere.
    #[error("cannot bind queue {num}: need CAP_NET_ADMIN")]
    PermissionDenied { num: u16 },
    /// The kernel refused the bind/configuration with this errno.
    #[error("cannot bind/configure queue {num}: {}", io::Error::from_raw_os_error(*errno))]
    Config { num: u16, errno: i32 },
    /// No acknowledgement of the bind within the time limit.
    #[error("no answer from the kernel when binding queue {num}")]
    Timeout { num: u16 },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> QueueError {
    move |source| QueueError::Io { what, source }
}

/// A verdict waiting to be sent: its header bytes in `Queue::heads`, and the payload (if any)
/// as a range of one receive buffer.
struct Pending {
    /// Packet id, for a DROP verdict should this one fail to go out.
    id: u32,
    head: std::ops::Range<usize>,
    payload: Option<(usize, std::ops::Range<usize>)>,
    pad: usize,
}

/// One bound queue on its own netlink socket.
pub struct Queue {
    sock: Socket,
    num: u16,
    bufs: area::RecvArea,
    lens: Vec<usize>,
    trunc: Vec<bool>,
    /// Datagrams that arrived while `open` waited for its acknowledgement. They are handled by
    /// the first `receive_batch` rather than thrown away (the `nfq` crate loses them).
    stash: VecDeque<Vec<u8>>,
    /// Reused between batches: decoded packets (buffer index, message) and verdict headers.
    parsed: Vec<(usize, PacketMsg)>,
    heads: Vec<u8>,
    pending: Vec<Pending>,
    /// Most bytes one `sendmsg` may carry.
    send_limit: usize,
    stats: QueueStats,
    /// The kernel acknowledged our bind: only then does Drop send UNBIND (an UNBIND after a
    /// refused bind would only earn an error for a socket about to close).
    bound: bool,
    /// `sendmsg` calls that carried verdicts.
    sends: u64,
    /// Reused by `send_verdicts`: the iovecs of one `sendmsg` (pointers into `heads` and the
    /// receive slots, only valid during that call).
    iov: Vec<libc::iovec>,
    /// Reused: DROP verdicts for packets whose verdicts failed to go out.
    drop_heads: Vec<u8>,
}

// SAFETY: only the iovecs in `iov` keep Queue from being `Send` (raw pointers). They point
// only into this Queue's own buffers, are rebuilt before each use and are never read across a
// move; the socket and the receive area are `Send`. The Queue is not `Sync`, so no two threads
// use it at once.
unsafe impl Send for Queue {}

impl Queue {
    /// The socket, sized and non-blocking, and the buffers: everything of a queue but the bind.
    /// Kernel-free parts (decide, the verdict bookkeeping) are tested on such a queue.
    fn unbound(opts: &QueueOptions) -> Result<Queue, QueueError> {
        // Close-on-exec and non-blocking from its creation (see `netlink::socket`): a child
        // process must never keep the queue bound.
        let sock =
            Socket::open(libc::NETLINK_NETFILTER, true, 0).map_err(io_err("netlink socket"))?;
        sock.set_buffer(Buffer::Receive, opts.rcvbuf)
            .map_err(io_err("SO_RCVBUF"))?;
        // Verdicts carrying payloads go out in one sendmsg per batch; netlink caps a message
        // at the send buffer size, so give it room for a batch of full-size payloads.
        let granted_snd = sock
            .set_buffer(Buffer::Send, opts.rcvbuf.max(BATCH * DGRAM_BUF))
            .map_err(io_err("SO_SNDBUF"))?;
        // Explicitly off (the default): with it on, the kernel would drop our packets
        // silently; with it off, recv reports ENOBUFS once, and we count it.
        sock.set_option(SOL_NETLINK, NETLINK_NO_ENOBUFS, 0)
            .map_err(io_err("NETLINK_NO_ENOBUFS"))?;
        // An error for a verdict would otherwise echo the whole verdict, payload included,
        // into our receive buffer; the header is all we read. Best effort (kernel >= 4.3).
        let _ = sock.set_option(SOL_NETLINK, NETLINK_CAP_ACK, 1);

        Ok(Queue {
            sock,
            num: opts.num,
            bufs: area::RecvArea::new(BATCH, DGRAM_BUF).map_err(io_err("receive buffers"))?,
            lens: vec![0; BATCH],
            trunc: vec![false; BATCH],
            stash: VecDeque::new(),
            parsed: Vec::with_capacity(BATCH),
            heads: Vec::with_capacity(BATCH * msg::VERDICT_HEAD_MAX),
            pending: Vec::with_capacity(BATCH),
            send_limit: granted_snd.saturating_sub(SNDBUF_SLACK).max(4096),
            stats: QueueStats::default(),
            bound: false,
            sends: 0,
            iov: Vec::with_capacity(BATCH * 3),
            drop_heads: Vec::with_capacity(BATCH * msg::VERDICT_HEAD_MAX),
        })
    }

    /// Opens a netlink socket, sizes its buffers and binds + configures queue `opts.num` in one
    /// atomic request: copy mode PACKET with the copy range asked, GSO flag as asked, max
    /// length.
    /// Call it before any rule sends packets to the queue.
    pub fn open(opts: &QueueOptions) -> Result<Queue, QueueError> {
        let mut q = Queue::unbound(opts)?;
        let gso_flag = if opts.gso { msg::NFQA_CFG_F_GSO } else { 0 };
        let mut req = Vec::new();
        msg::encode_config(
            &mut req,
            opts.num,
            CONFIG_SEQ,
            &msg::ConfigRequest {
                cmd: Some(msg::NFQNL_CFG_CMD_BIND),
                params: Some((msg::NFQNL_COPY_PACKET, opts.copy_range)),
                max_len: Some(opts.max_len),
                flags: Some((gso_flag, msg::NFQA_CFG_F_GSO)),
                ack: true,
            },
        );
        q.sock.send(&req).map_err(io_err("send bind request"))?;
        q.await_ack()?;
        q.bound = true;
        Ok(q)
    }

    /// Reads until the acknowledgement (or error) of the bind request arrives, keeping any
    /// packet that is queued in the meantime for the first `receive_batch`.
    fn await_ack(&mut self) -> Result<(), QueueError> {
        let fd = self.sock.as_raw_fd();
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QueueError::Timeout { num: self.num });
            }
            if !self.sock.poll_readable(left).map_err(io_err("poll"))? {
                continue;
            }
            let got = match self.bufs.recv(fd, 1, &mut self.lens, &mut self.trunc) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.enobufs += 1;
                    continue;
                }
                Err(e) => return Err(io_err("recv bind acknowledgement")(e)),
            };
            if got == 0 {
                continue;
            }
            let data = &self.bufs.slot(0)[..self.lens[0]];
            let mut has_packet = false;
            let mut outcome = None;
            for m in msg::parse_datagram(data) {
                match m {
                    Ok(Message::Ack { seq }) if seq == CONFIG_SEQ => outcome = Some(Ok(())),
                    Ok(Message::Error { errno, seq }) if seq == CONFIG_SEQ => {
                        outcome = Some(Err(errno))
                    }
                    Ok(Message::Packet(_)) => has_packet = true,
                    _ => {}
                }
            }
            if has_packet {
                self.stash.push_back(data.to_vec());
            }
            match outcome {
                None => {}
                Some(Ok(())) => return Ok(()),
                Some(Err(errno)) => return Err(self.bind_error(errno)),
            }
        }
    }

    fn bind_error(&self, errno: i32) -> QueueError {
        let num = self.num;
        match errno {
            // EBUSY: this socket already has it (older kernels also used it for others).
            libc::EBUSY => QueueError::AlreadyBound { num },
            // EPERM means either "no CAP_NET_ADMIN" (nfnetlink's check) or "bound by another
            // socket" (nfnetlink_queue's owner check); the queue list tells them apart.
            libc::EPERM => match proc_queue(num) {
                Some(_) => QueueError::AlreadyBound { num },
                None => QueueError::PermissionDenied { num },
            },
            _ => QueueError::Config { num, errno },
        }
    }

    /// The queue number.
    pub fn num(&self) -> u16 {
        self.num
    }

    /// The first third of a batch: receives what is waiting (up to
    /// [`BATCH`] datagrams) and decodes it. Returns the number of datagrams, 0 when nothing
    /// was waiting. Split out so that a caller sharing state with other queues' threads can
    /// hold its lock for [`Queue::decide`] only, not across the system calls.
    /// Asynchronous netlink errors and ENOBUFS are counted in [`QueueStats`], not returned.
    pub fn receive_batch(&mut self) -> Result<usize, QueueError> {
        self.parsed.clear();
        let count = self.receive()?;
        if count > 0 {
            self.parse(count);
        }
        Ok(count)
    }

    /// The second third: calls `handler` for each packet received by
    /// [`Queue::receive_batch`] and prepares its verdict. Returns the number of packets.
    ///
    /// A packet whose payload is `truncated` never gets its payload back, whatever the
    /// handler says: a decision to accept it modified becomes DROP (fail closed, counted in
    /// [`QueueStats::failed_closed`]), never an accept of the unmodified original.
    pub fn decide(&mut self, handler: &mut dyn FnMut(&mut Packet<'_>) -> Decision) -> usize {
        let Queue {
            num,
            bufs,
            parsed,
            heads,
            pending,
            stats,
            ..
        } = self;
        heads.clear();
        pending.clear();
        for (idx, pm) in parsed.iter() {
            let truncated = pm.truncated();
            let mut pkt = Packet {
                meta: pm.meta,
                checksum_ready: pm.checksum_ready(),
                gso: pm.gso(),
                truncated,
                orig_len: if truncated { pm.cap_len } else { None },
                payload: &mut bufs.slot_mut(*idx)[pm.payload.clone()],
            };
            let d = handler(&mut pkt);
            let (verdict, with_payload) = verdict_of(d, truncated, pm.payload.len());
            if d.verdict == Verdict::Accept && verdict == msg::NF_DROP {
                stats.failed_closed += 1;
            }
            if truncated && verdict == msg::NF_ACCEPT && d.mark.is_some() {
                stats.header_only += 1;
            }
            let start = heads.len();
            let pad = msg::encode_verdict_head(
                heads,
                *num,
                pm.id,
                verdict,
                d.mark,
                with_payload.then_some(pm.payload.len()),
            )
            // Cannot fail: the length was checked just above.
            .unwrap_or(0);
            pending.push(Pending {
                id: pm.id,
                head: start..heads.len(),
                payload: with_payload.then(|| (*idx, pm.payload.clone())),
                pad,
            });
        }
        stats.received += parsed.len() as u64;
        parsed.len()
    }

    /// Fills the first datagram buffers: from the stash if `open` left anything there,
    /// otherwise with one `recvmmsg`. Returns how many buffers hold a datagram.
    fn receive(&mut self) -> Result<usize, QueueError> {
        if !self.stash.is_empty() {
            let mut n = 0;
            while n < BATCH {
                let Some(d) = self.stash.pop_front() else {
                    break;
                };
                let len = d.len().min(DGRAM_BUF);
                self.bufs.slot_mut(n)[..len].copy_from_slice(&d[..len]);
                self.lens[n] = len;
                self.trunc[n] = false;
                n += 1;
            }
            return Ok(n);
        }
        let fd = self.sock.as_raw_fd();
        // ENOBUFS is reported once per overflow, ahead of the datagrams still queued: count it
        // and read on. Bounded so that a pathological error storm cannot spin here forever.
        for _ in 0..8 {
            match self.bufs.recv(fd, BATCH, &mut self.lens, &mut self.trunc) {
                Ok(n) => return Ok(n),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(0),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        self.stats.enobufs += 1;
                        continue;
                    }
                    _ => return Err(io_err("recvmmsg")(e)),
                },
            }
        }
        Ok(0)
    }

    /// Decodes the received datagrams into `self.parsed`, counting errors and anything that
    /// is not a packet.
    fn parse(&mut self, count: usize) {
        self.parsed.clear();
        for i in 0..count {
            // A cut datagram's last message fails the length check in the parser, which is
            // counted below; the messages before it are still good.
            let data = &self.bufs.slot(i)[..self.lens[i]];
            for m in msg::parse_datagram(data) {
                match m {
                    Ok(Message::Packet(p)) => self.parsed.push((i, p)),
                    Ok(Message::Error { .. }) | Err(_) => self.stats.async_errors += 1,
                    Ok(Message::Ack { .. } | Message::Other { .. }) => {}
                }
            }
            if self.trunc[i] {
                self.stats.async_errors += 1;
            }
        }
    }

    /// Sends `self.pending` in as few `sendmsg` calls as the send buffer allows (normally
    /// one). If the kernel still finds a datagram too big (EMSGSIZE: the buffer shrank since
    /// `open`), the limit is learned again, at most half of what failed so that every retry
    /// makes progress, and the unsent rest goes out in smaller pieces.
    ///
    /// A `sendmsg` that still fails (after the brief retries of [`send_all`]) would leave its
    /// packets in the kernel queue until unbind: they are dropped explicitly instead, by DROP
    /// verdicts without payload (small, so they go out where the payloads could not), counted
    /// in [`QueueStats::send_failed_dropped`]; what cannot even be dropped is counted in
    /// [`QueueStats::verdicts_lost`]. The rest of the batch is still sent, and the first error
    /// is returned afterwards.
    ///
    /// The last third of a batch, after [`Queue::decide`].
    pub fn send_verdicts(&mut self) -> Result<(), QueueError> {
        // The descriptor, not the socket: `send_verdicts_with` borrows all of `self`.
        let fd = self.sock.as_raw_fd();
        // SAFETY: `send_verdicts_with` passes only iovecs describing its own buffers, valid
        // for the duration of each call; `fd` is the socket `self` keeps open meanwhile.
        self.send_verdicts_with(&mut |iov, bytes| unsafe { send_all(fd, iov, bytes) })
    }

    /// [`Queue::send_verdicts`] through `send`, which sends one datagram described by iovecs
    /// of `bytes` bytes in total (the socket in the daemon; a stand-in in tests).
    fn send_verdicts_with(
        &mut self,
        send: &mut dyn FnMut(&[libc::iovec], usize) -> io::Result<()>,
    ) -> Result<(), QueueError> {
        static PAD: [u8; 4] = [0; 4];
        let mut first_error = None;
        let mut next = 0;
        while next < self.pending.len() {
            let iov = &mut self.iov;
            iov.clear();
            let mut bytes = 0usize;
            let mut end = next;
            while let Some(p) = self.pending.get(end) {
                let head = &self.heads[p.head.clone()];
                let payload: &[u8] = match &p.payload {
                    Some((idx, r)) => &self.bufs.slot(*idx)[r.clone()],
                    None => &[],
                };
                let size = head.len() + payload.len() + p.pad;
                if end > next && bytes + size > self.send_limit {
                    break;
                }
                iov.push(iovec(head));
                if !payload.is_empty() {
                    iov.push(iovec(payload));
                }
                if p.pad > 0 {
                    iov.push(iovec(&PAD[..p.pad]));
                }
                bytes += size;
                end += 1;
            }
            match send(&self.iov, bytes) {
                Ok(()) => {
                    self.stats.verdicts += (end - next) as u64;
                    self.sends += 1;
                    next = end;
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && end - next > 1 => {
                    let now = self.sock.buffer(Buffer::Send).unwrap_or(0);
                    self.send_limit = now.saturating_sub(SNDBUF_SLACK).min(bytes / 2).max(1);
                }
                Err(e) => {
                    self.drop_unsent(next..end, send);
                    first_error.get_or_insert(e);
                    next = end;
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(io_err("sendmsg verdicts")(e)),
        }
    }

    /// DROP verdicts, without payload or mark, for `self.pending[range]`, whose verdicts did
    /// not go out. Tried twice; counted either way.
    fn drop_unsent(
        &mut self,
        range: std::ops::Range<usize>,
        send: &mut dyn FnMut(&[libc::iovec], usize) -> io::Result<()>,
    ) {
        let n = range.len() as u64;
        self.drop_heads.clear();
        for p in &self.pending[range] {
            // Cannot fail: there is no payload whose length could be refused.
            let _ = msg::encode_verdict_head(
                &mut self.drop_heads,
                self.num,
                p.id,
                msg::NF_DROP,
                None,
                None,
            );
        }
        let iov = [iovec(&self.drop_heads)];
        let bytes = self.drop_heads.len();
        if send(&iov, bytes).is_ok() || send(&iov, bytes).is_ok() {
            self.stats.send_failed_dropped += n;
            self.stats.verdicts += n;
            self.sends += 1;
        } else {
            self.stats.verdicts_lost += n;
        }
    }

    /// Number of `sendmsg` calls that carried verdicts so far (for tests and tuning: with
    /// batching it stays well below `stats().verdicts`).
    pub fn verdict_sends(&self) -> u64 {
        self.sends
    }

    /// Waits up to `timeout` for packets. True when `receive_batch` has something to do.
    pub fn wait(&self, timeout: Duration) -> Result<bool, QueueError> {
        self.wait_or(-1, timeout)
    }

    /// Like [`Queue::wait`], but also returns (false) once `wake` is readable or hung up: how
    /// the daemon's main thread wakes a queue thread that should stop.
    pub fn wait_or(&self, wake: RawFd, timeout: Duration) -> Result<bool, QueueError> {
        if !self.stash.is_empty() {
            return Ok(true);
        }
        self.sock
            .poll_readable_or(wake, timeout)
            .map_err(io_err("poll"))
    }

    pub fn stats(&self) -> QueueStats {
        self.stats.clone()
    }
}

/// The verdict code for decision `d` of a packet whose payload is `len` bytes (`truncated`:
/// shorter than the packet), and whether the payload goes with it. A decision to send a
/// modified payload that cannot be sent (a truncated packet, whose payload would cut it; one
/// beyond the copy range) becomes DROP: the unmodified packet must not pass in its place.
fn verdict_of(d: Decision, truncated: bool, len: usize) -> (u32, bool) {
    let sendable = !truncated && len <= msg::MAX_PAYLOAD;
    match (d.verdict, d.modified) {
        (Verdict::Accept, true) if !sendable => (msg::NF_DROP, false),
        (Verdict::Accept, modified) => (msg::NF_ACCEPT, modified),
        // A dropped packet's payload is of no use to anyone.
        (Verdict::Drop, _) => (msg::NF_DROP, false),
    }
}

/// One `sendmsg` of verdicts. Netlink takes a datagram whole or not at all; ENOBUFS/ENOMEM
/// (no memory for the skb) are retried briefly, because a lost verdict leaves its packet in the
/// kernel queue until the queue is unbound.
///
/// # Safety
/// SAFETY: as [`socket::send_iov_to`]: `fd` is an open netlink socket and every iovec
/// describes memory valid for reads during the call.
unsafe fn send_all(fd: RawFd, iovs: &[libc::iovec], bytes: usize) -> io::Result<()> {
    let mut tries = 0;
    loop {
        // SAFETY: passed on from the caller.
        match unsafe { socket::send_iov_to(fd, iovs) } {
            Ok(n) if n == bytes => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("sent {n} of {bytes} bytes"))),
            Err(e)
                if tries < 3
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS | libc::ENOMEM | libc::EAGAIN)
                    ) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Drop for Queue {
    /// Unbinds explicitly (best effort). Closing the socket would unbind too, but saying so
    /// releases the queue number at once; packets still queued are then dropped by the
    /// kernel (or pass, with a `bypass` rule).
    fn drop(&mut self) {
        if !self.bound {
            return;
        }
        let mut req = Vec::new();
        msg::encode_config(
            &mut req,
            self.num,
            CONFIG_SEQ + 1,
            &msg::ConfigRequest {
                cmd: Some(msg::NFQNL_CFG_CMD_UNBIND),
                ..Default::default()
            },
        );
        let _ = self.sock.send(&req);
    }
}

/// A line of `/proc/net/netfilter/nfnetlink_queue` for one queue, as seen from the calling
/// thread's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcQueue {
    pub num: u16,
    /// Netlink port id of the bound socket.
    pub portid: u32,
    /// Packets waiting for a verdict.
    pub waiting: u32,
    pub copy_mode: u8,
    pub copy_range: u32,
    /// Dropped because the queue was full.
    pub queue_dropped: u32,
    /// Dropped because netlink could not deliver them (socket buffer full).
    pub user_dropped: u32,
    pub id_sequence: u32,
}

/// Reads the kernel's status line for queue `num`; `None` when the queue is not bound (or the
/// module is not loaded). Uses /proc/thread-self, because /proc/net follows the main thread's
/// namespace, not the caller's (which may differ after `setns`).
pub fn proc_queue(num: u16) -> Option<ProcQueue> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue").ok()?;
    text.lines()
        .filter_map(parse_proc_line)
        .find(|q| q.num == num)
}

fn parse_proc_line(line: &str) -> Option<ProcQueue> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    Some(ProcQueue {
        num: f[0].parse().ok()?,
        portid: f[1].parse().ok()?,
        waiting: f[2].parse().ok()?,
        copy_mode: f[3].parse().ok()?,
        copy_range: f[4].parse().ok()?,
        queue_dropped: f[5].parse().ok()?,
        user_dropped: f[6].parse().ok()?,
        id_sequence: f[7].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_line() {
        let l = "    3 123456     0 2 65531     0     0       12  1";
        assert_eq!(
            parse_proc_line(l),
            Some(ProcQueue {
                num: 3,
                portid: 123456,
                waiting: 0,
                copy_mode: 2,
                copy_range: 65531,
                queue_dropped: 0,
                user_dropped: 0,
                id_sequence: 12,
            })
        );
        assert_eq!(parse_proc_line("garbage"), None);
    }

    #[test]
    fn defaults() {
        let o = QueueOptions::default();
        assert_eq!((o.rcvbuf, o.max_len, o.gso), (8 << 20, 8192, true));
    }

    fn accept(modified: bool) -> Decision {
        Decision {
            verdict: Verdict::Accept,
            modified,
            mark: None,
        }
    }

    #[test]
    fn a_modified_payload_that_cannot_go_back_is_dropped() {
        assert_eq!(
            verdict_of(accept(true), false, 1500),
            (msg::NF_ACCEPT, true)
        );
        assert_eq!(
            verdict_of(accept(false), true, 1500),
            (msg::NF_ACCEPT, false)
        );
        assert_eq!(verdict_of(accept(true), true, 1500), (msg::NF_DROP, false));
        let big = msg::MAX_PAYLOAD + 1;
        assert_eq!(verdict_of(accept(true), false, big), (msg::NF_DROP, false));
        let drop = Decision {
            verdict: Verdict::Drop,
            modified: true,
            mark: None,
        };
        assert_eq!(verdict_of(drop, false, 60), (msg::NF_DROP, false));
    }

    #[test]
    fn the_queue_socket_is_close_on_exec() {
        let q = queue_with(&[]);
        // SAFETY: F_GETFD on the queue's own open descriptor.
        let flags = unsafe { libc::fcntl(q.as_raw_fd(), libc::F_GETFD) };
        assert!(
            flags >= 0 && flags & libc::FD_CLOEXEC != 0,
            "flags {flags:#x}"
        );
    }

    /// A queue with `packets` (id, truncated) waiting in its stash, as if received.
    fn queue_with(packets: &[(u32, bool)]) -> Queue {
        let mut q = Queue::unbound(&QueueOptions {
            num: 7,
            rcvbuf: 1 << 20,
            ..QueueOptions::default()
        })
        .expect("netlink socket");
        let payload = [0x45u8; 60];
        for &(id, truncated) in packets {
            let mut d = Vec::new();
            msg::encode_packet(
                &mut d,
                &msg::PacketSpec {
                    queue: 7,
                    id,
                    hw_protocol: 0x0800,
                    cap_len: truncated.then_some(9000),
                    payload: Some(&payload),
                    ..Default::default()
                },
            );
            q.stash.push_back(d);
        }
        assert_eq!(q.receive_batch().unwrap(), packets.len());
        q
    }

    /// The verdicts in the datagram that `iov` describes.
    fn verdicts_in(iov: &[libc::iovec]) -> Vec<msg::VerdictMsg> {
        let mut bytes = Vec::new();
        for v in iov {
            // SAFETY: the queue hands only iovecs of its own live buffers to the sender.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let m = msg::parse_verdict(&bytes[at..]).expect("verdict");
            at += m.next;
            out.push(m);
        }
        out
    }

    #[test]
    fn decide_fails_closed_on_a_truncated_packet_it_was_told_to_modify() {
        let mut q = queue_with(&[(1, false), (2, true), (3, false)]);
        assert_eq!(q.decide(&mut |_| accept(true)), 3);
        let mut sent = Vec::new();
        q.send_verdicts_with(&mut |iov, _| {
            sent.extend(verdicts_in(iov));
            Ok(())
        })
        .unwrap();
        let v: Vec<(u32, u32, bool)> = sent
            .iter()
            .map(|m| (m.id, m.verdict, m.payload.is_some()))
            .collect();
        assert_eq!(
            v,
            vec![
                (1, msg::NF_ACCEPT, true),
                (2, msg::NF_DROP, false),
                (3, msg::NF_ACCEPT, true)
            ]
        );
        assert_eq!((q.stats().failed_closed, q.stats().verdicts), (1, 3));
    }

    #[test]
    fn a_header_only_verdict_carries_the_mark_and_no_payload() {
        let mut q = queue_with(&[(1, true), (2, false)]);
        let mut lens = Vec::new();
        q.decide(&mut |p| {
            lens.push((p.payload.len(), p.len()));
            Decision {
                verdict: Verdict::Accept,
                modified: false,
                mark: Some(0x4f00),
            }
        });
        assert_eq!(
            lens,
            [(60, 9000), (60, 60)],
            "counted at the length the kernel reported"
        );
        let mut sent = Vec::new();
        q.send_verdicts_with(&mut |iov, _| {
            sent.extend(verdicts_in(iov));
            Ok(())
        })
        .unwrap();
        let v: Vec<(u32, u32, Option<u32>, bool)> = sent
            .iter()
            .map(|m| (m.id, m.verdict, m.mark, m.payload.is_some()))
            .collect();
        assert_eq!(
            v,
            vec![
                (1, msg::NF_ACCEPT, Some(0x4f00), false),
                (2, msg::NF_ACCEPT, Some(0x4f00), false)
            ]
        );
        assert_eq!(
            (q.stats().header_only, q.stats().failed_closed),
            (1, 0),
            "only the truncated one counts as header-only"
        );
    }

    #[test]
    fn a_failed_verdict_send_drops_its_packets_explicitly() {
        let mut q = queue_with(&[(10, false), (11, false)]);
        q.decide(&mut |_| accept(true));
        // The payload-bearing datagram fails (ENOMEM after its retries); small ones go.
        let mut sent = Vec::new();
        let r = q.send_verdicts_with(&mut |iov, bytes| {
            if bytes > 150 {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            sent.extend(verdicts_in(iov));
            Ok(())
        });
        assert!(r.is_err(), "the failure is still reported");
        let v: Vec<(u32, u32, bool)> = sent
            .iter()
            .map(|m| (m.id, m.verdict, m.payload.is_some()))
            .collect();
        assert_eq!(
            v,
            vec![(10, msg::NF_DROP, false), (11, msg::NF_DROP, false)]
        );
        let st = q.stats();
        assert_eq!(
            (st.send_failed_dropped, st.verdicts_lost, st.verdicts),
            (2, 0, 2)
        );

        // Nothing goes at all: counted as lost, not as sent.
        let mut q = queue_with(&[(20, false)]);
        q.decide(&mut |_| accept(true));
        let mut tries = 0;
        let r = q.send_verdicts_with(&mut |_, _| {
            tries += 1;
            Err(io::Error::from_raw_os_error(libc::EPERM))
        });
        assert!(r.is_err());
        assert_eq!(tries, 3, "the batch once, its DROP twice");
        let st = q.stats();
        assert_eq!(
            (st.send_failed_dropped, st.verdicts_lost, st.verdicts),
            (0, 1, 0)
        );
    }

    fn assert_send<T: Send>() {}

    #[test]
    fn queue_is_send() {
        assert_send::<Queue>();
    }
}
