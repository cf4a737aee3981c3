//! The rtnetlink watch: a socket subscribed to link and address notifications, drained by the
//! daemon's poll loop, telling it when to take a new [`Snapshot`](super::Snapshot).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::msg::{self, Body, Message};
use crate::netlink::{Buffer, Socket};

/// Most datagrams one `drain` reads: the daemon's loop keeps its other fds served under an
/// event storm. What is left keeps the socket readable, so the next poll comes back here.
const DRAIN_BATCH: usize = 64;
/// Notifications are small (one link or address each, under a page); a datagram longer than
/// this is reported as truncated and treated as a change.
const RECV_BUF: usize = 32 * 1024;
/// Receive buffer asked for: room for a burst (a PPP reconnect, a VPN coming up) of a few
/// hundred notifications before the kernel overruns us.
const DEFAULT_RCVBUF: usize = 1 << 20;

/// What a notification means for the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A decoded message: a link or an address notification, or anything else the kernel sent.
    Message(Message),
    /// The kernel dropped notifications (ENOBUFS), a datagram was cut short, or bytes could
    /// not be decoded: what changed is unknown.
    Lost,
}

/// A non-blocking, close-on-exec rtnetlink socket subscribed to RTMGRP_LINK,
/// RTMGRP_IPV4_IFADDR and RTMGRP_IPV6_IFADDR of the opening thread's network namespace.
///
/// Poll its fd for readability with the daemon's other fds; on readiness call [`drain`]; when
/// it returns true, take a new [`Snapshot`](super::Snapshot) and rebuild the table.
///
/// [`drain`]: Watcher::drain
#[derive(Debug)]
pub struct Watcher {
    fd: Socket,
    buf: Vec<u8>,
    /// Last seen (name, IFF_UP | IFF_RUNNING) per ifindex. RTM_NEWLINK is also sent for
    /// changes that do not matter here (MTU, statistics, wireless events, promiscuity); only a
    /// new link, a rename or an up/down/carrier change is reported. Unknown indexes count as
    /// new, so the map needs no initial dump.
    links: HashMap<u32, (Option<String>, u32)>,
    overruns: u64,
}

impl Watcher {
    /// Opens the socket and joins the three groups. Notifications are queued from this moment.
    pub fn open() -> io::Result<Watcher> {
        let groups = msg::RTMGRP_LINK | msg::RTMGRP_IPV4_IFADDR | msg::RTMGRP_IPV6_IFADDR;
        let fd = Socket::open(libc::NETLINK_ROUTE, true, groups)?;
        // A larger buffer makes overruns rarer; they are survivable, so failure is not fatal.
        let _ = fd.set_buffer(Buffer::Receive, DEFAULT_RCVBUF);
        Ok(Watcher {
            fd,
            buf: vec![0u8; RECV_BUF],
            links: HashMap::new(),
            overruns: 0,
        })
    }

    /// Sets the socket's receive buffer (the kernel doubles the value and enforces a minimum).
    pub fn set_receive_buffer(&mut self, bytes: usize) -> io::Result<()> {
        self.fd.set_buffer(Buffer::Receive, bytes).map(|_| ())
    }

    /// How many times the kernel reported that it dropped notifications for us (ENOBUFS).
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Reads the notifications waiting (at most a bounded batch of datagrams) without blocking.
    /// True if any of them may change a snapshot: an IPv4/IPv6 address added, changed or
    /// removed; a link added, removed, renamed, set up or down, or its carrier changed; or
    /// notifications lost (ENOBUFS overrun, truncated or undecodable datagram), after which
    /// only a new snapshot tells the truth. Errors other than these are the socket's own.
    pub fn drain(&mut self) -> io::Result<bool> {
        self.drain_with(|_| {})
    }

    /// As [`drain`](Watcher::drain), also handing every event to `seen` (for logs and tests).
    pub fn drain_with(&mut self, mut seen: impl FnMut(&Event)) -> io::Result<bool> {
        let mut relevant = false;
        for _ in 0..DRAIN_BATCH {
            let got = match self.fd.recv(&mut self.buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // The kernel dropped notifications: the link cache is stale too.
                    self.overruns += 1;
                    self.links.clear();
                    seen(&Event::Lost);
                    relevant = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !got.from_kernel {
                continue;
            }
            if got.truncated {
                self.links.clear();
                seen(&Event::Lost);
                relevant = true;
            }
            for m in msg::messages(&self.buf[..got.len]) {
                let event = match m {
                    Ok(m) => {
                        relevant |= judge(&mut self.links, &m);
                        Event::Message(m)
                    }
                    Err(_) => {
                        relevant = true;
                        Event::Lost
                    }
                };
                seen(&event);
            }
        }
        Ok(relevant)
    }
}

/// Whether one message may change a snapshot; keeps the link cache current.
fn judge(links: &mut HashMap<u32, (Option<String>, u32)>, m: &Message) -> bool {
    match &m.body {
        Body::Addr(a) => a.family == msg::AF_INET || a.family == msg::AF_INET6,
        Body::Link(l) if !l.new => {
            links.remove(&l.index);
            true
        }
        Body::Link(l) => {
            let now = (l.name.clone(), l.flags & (msg::IFF_UP | msg::IFF_RUNNING));
            // A message without a name is odd enough to count as a change every time.
            let same = l.name.is_some() && links.get(&l.index) == Some(&now);
            links.insert(l.index, now);
            !same
        }
        Body::Overrun | Body::Malformed(_) => true,
        Body::Done | Body::Error(_) | Body::Other => false,
    }
}

impl AsRawFd for Watcher {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
