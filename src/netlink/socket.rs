//! A netlink socket on a descriptor netnat owns: open (always close-on-exec), bind, options
//! and buffer sizes, send, receive, poll with a timeout or a deadline. Every `unsafe` socket
//! call of netnat's netlink users lives here (the queue's batched `recvmmsg` area aside).
//!
//! Why not `mnl::Socket`: libmnl's `mnl_socket_open` sets neither close-on-exec nor
//! non-blocking at creation and mnl 0.3.1 can neither pass flags nor wrap a descriptor. A
//! child process started by any thread would inherit the socket between `socket(2)` and a
//! later `fcntl`: the nft session's owned table would outlive netnat, a queue would stay
//! bound. What mnl adds on top (send, recv) is one libc call each.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Socket options of `SOL_NETLINK` (`linux/netlink.h`); not all are in `libc` everywhere.
pub const SOL_NETLINK: libc::c_int = 270;
pub const NETLINK_NO_ENOBUFS: libc::c_int = 5;
pub const NETLINK_CAP_ACK: libc::c_int = 10;
pub const NETLINK_EXT_ACK: libc::c_int = 11;

// Not exported by `libc` for every Linux target; the values are the generic asm/socket.h ones
// used by x86, arm and the other mainstream architectures (mips/sparc/parisc differ).
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

/// Which socket buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    Receive,
    Send,
}

/// One received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer: the stored part is cut short.
    pub truncated: bool,
    /// Sent by the kernel (port id 0). Any local process may send us unicast netlink; only
    /// the kernel's word counts.
    pub from_kernel: bool,
}

/// A netlink socket, close-on-exec, bound to a port id the kernel chose.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// A socket of netlink `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER), non-blocking if
    /// asked, subscribed to the multicast `groups` (the legacy bitmask form of bind).
    pub fn open(protocol: libc::c_int, nonblocking: bool, groups: u32) -> io::Result<Socket> {
        let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr = kernel_addr();
        addr.nl_groups = groups;
        // SAFETY: `addr` is a live sockaddr_nl and its exact size is passed; nl_pid 0 lets the
        // kernel pick the port id.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd })
    }

    /// The port id the kernel gave the socket (replies to our requests carry it).
    pub fn port_id(&self) -> io::Result<u32> {
        let mut addr = kernel_addr();
        let mut len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are live and `len` holds the size of `addr`.
        let rc = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_nl).cast::<libc::sockaddr>(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(addr.nl_pid)
    }

    pub fn set_option(
        &self,
        level: libc::c_int,
        opt: libc::c_int,
        val: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: `val` is a live c_int and its size is passed; the kernel only reads it. An
        // invalid option is reported as an error, not UB.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (&val as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn option(&self, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
        let mut val: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `val` and `len` are live locals; `len` tells the kernel how much it may write.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (&mut val as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(val)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sets a buffer size, privileged variant first: `SO_*BUFFORCE` ignores the
    /// `net.core.[rw]mem_max` ceiling (64 KiB on many hosts, far below what a burst needs) but
    /// needs CAP_NET_ADMIN; the plain option is clamped to that ceiling. Returns the size the
    /// kernel granted (it reports twice the value asked for, for its bookkeeping overhead).
    pub fn set_buffer(&self, which: Buffer, bytes: usize) -> io::Result<usize> {
        let val = bytes.min(libc::c_int::MAX as usize / 2) as libc::c_int;
        let (force, plain) = match which {
            Buffer::Receive => (SO_RCVBUFFORCE, libc::SO_RCVBUF),
            Buffer::Send => (SO_SNDBUFFORCE, libc::SO_SNDBUF),
        };
        if self.set_option(libc::SOL_SOCKET, force, val).is_err() {
            self.set_option(libc::SOL_SOCKET, plain, val)?;
        }
        self.buffer(which)
    }

    /// The buffer size the kernel holds now.
    pub fn buffer(&self, which: Buffer) -> io::Result<usize> {
        let opt = match which {
            Buffer::Receive => libc::SO_RCVBUF,
            Buffer::Send => libc::SO_SNDBUF,
        };
        Ok(self.option(libc::SOL_SOCKET, opt)?.max(0) as usize)
    }

    /// Sends one datagram to the kernel; the whole of it or an error.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.send_parts(&[bytes])
    }

    /// Sends the concatenation of `parts` as one datagram to the kernel with one `sendmsg`
    /// (a batch must arrive in one datagram); the whole of it or an error.
    pub fn send_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        let iovs: Vec<libc::iovec> = parts.iter().map(|p| iovec(p)).collect();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // SAFETY: the iovecs describe `parts`, borrowed for the call.
        let n = unsafe { self.send_iov(&iovs) }?;
        if n == total {
            Ok(())
        } else {
            Err(io::Error::other(format!("sent {n} of {total} bytes")))
        }
    }

    /// One `sendmsg` of the iovecs the caller built (the verdict path reuses one vector of
    /// them, so that sending allocates nothing), retried on EINTR. Returns the bytes sent.
    ///
    /// # Safety
    /// SAFETY: every iovec must describe memory that is valid for reads for the duration of
    /// the call.
    pub unsafe fn send_iov(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the descriptor is this socket's own; the iovecs are the caller's promise.
        unsafe { send_iov_to(self.fd.as_raw_fd(), iovs) }
    }

    /// Receives one datagram without blocking: `WouldBlock` when none is waiting. ENOBUFS
    /// (the kernel dropped messages for us) is returned as the error it is, for the caller to
    /// judge. A datagram longer than `buf` is cut and says so.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut from = kernel_addr();
            let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf`, `from` and `from_len` are live and their sizes are passed.
            // MSG_TRUNC makes the return value the datagram's real length, so truncation is
            // visible; MSG_DONTWAIT keeps a blocking socket from blocking here.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_nl).cast::<libc::sockaddr>(),
                    &mut from_len,
                )
            };
            if n >= 0 {
                let n = n as usize;
                return Ok(Received {
                    len: n.min(buf.len()),
                    truncated: n > buf.len(),
                    from_kernel: from.nl_pid == 0,
                });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Throws away every datagram waiting (answers left over from an interrupted exchange
    /// would otherwise be taken for the next one's). ENOBUFS is cleared by reading it.
    pub fn discard_pending(&self, buf: &mut [u8]) -> io::Result<()> {
        loop {
            match self.recv(buf) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the socket is readable (or has a pending error) or `timeout` passes.
    /// `Ok(false)` on timeout or EINTR.
    pub fn poll_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_readable_or(self.fd.as_raw_fd(), -1, timeout)
    }

    /// Like [`Socket::poll_readable`], but also returns (`Ok(false)`) as soon as `wake` is
    /// readable or hung up; a negative `wake` is ignored.
    pub fn poll_readable_or(&self, wake: RawFd, timeout: Duration) -> io::Result<bool> {
        poll_readable_or(self.fd.as_raw_fd(), wake, timeout)
    }

    /// Waits until the socket is readable or `deadline` passes (EINTR waits on); false on
    /// timeout.
    pub fn wait_readable(&self, deadline: Instant) -> io::Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if self.poll_readable(left)? {
                return Ok(true);
            }
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// [`Socket::send_iov`] on a descriptor, for a caller that cannot hold a borrow of the
/// socket across the call (the queue's verdict path borrows all of its queue).
///
/// # Safety
/// SAFETY: `fd` must be an open netlink socket and every iovec must describe memory that is
/// valid for reads for the duration of the call.
pub unsafe fn send_iov_to(fd: RawFd, iovs: &[libc::iovec]) -> io::Result<usize> {
    let mut addr = kernel_addr();
    // SAFETY: msghdr is plain data; zeroed is an empty message, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // sendmsg only reads the iovec array; the pointer is mutable in the C type alone.
    msg.msg_iov = iovs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iovs.len() as _;
    loop {
        // SAFETY: `msg` points at `addr` and at `iovs`, whose memory the caller vouches for;
        // the kernel only reads them.
        let rc = unsafe { libc::sendmsg(fd, &msg, 0) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An iovec describing `part`, for [`Socket::send_iov`] (which only reads through it).
pub fn iovec(part: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: part.as_ptr() as *mut libc::c_void,
        iov_len: part.len(),
    }
}

/// An all-zero `sockaddr_nl` of family AF_NETLINK: the kernel (port id 0), no groups.
fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data for which all-zero is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

fn poll_readable_or(fd: RawFd, wake: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Round up so that a sub-millisecond timeout still waits instead of spinning.
    let ms = timeout
        .as_micros()
        .div_ceil(1000)
        .min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: two valid pollfd structs (poll skips one with a negative fd).
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    // POLLERR counts as ready: the pending error (e.g. ENOBUFS) is collected by the next recv.
    Ok(rc > 0 && pfds[0].revents & (libc::POLLIN | libc::POLLERR) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD on an open descriptor of this test.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn every_socket_is_close_on_exec_and_bound() {
        for (proto, nonblocking) in [
            (libc::NETLINK_ROUTE, true),
            (libc::NETLINK_NETFILTER, false),
        ] {
            let s = Socket::open(proto, nonblocking, 0).expect("netlink socket");
            assert!(cloexec(s.as_raw_fd()));
            assert_ne!(s.port_id().unwrap(), 0, "the kernel chose a port id");
            // SAFETY: F_GETFL on the socket's own descriptor.
            let fl = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(fl & libc::O_NONBLOCK != 0, nonblocking);
        }
    }

    #[test]
    fn recv_does_not_block_and_poll_times_out() {
        let s = Socket::open(libc::NETLINK_ROUTE, false, 0).unwrap();
        let mut buf = [0u8; 64];
        let e = s.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(!s.poll_readable(Duration::from_millis(5)).unwrap());
        let t = Instant::now();
        assert!(!s.wait_readable(t + Duration::from_millis(20)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(20));
        s.discard_pending(&mut buf).unwrap();
    }

    #[test]
    fn a_request_gets_its_answer_and_buffers_are_granted() {
        use crate::netlink::{ack, frame};
        let s = Socket::open(libc::NETLINK_ROUTE, false, 0).unwrap();
        assert!(s.set_buffer(Buffer::Receive, 1 << 16).unwrap() >= 1 << 16);
        assert!(s.buffer(Buffer::Send).unwrap() > 0);
        // An RTM_GETLINK without NLM_F_DUMP for ifindex 0 and no name: refused, with an ACK
        // error carrying our sequence number.
        let mut req = Vec::new();
        let st = frame::put_header(&mut req, 18, frame::NLM_F_REQUEST | frame::NLM_F_ACK, 41);
        req.resize(req.len() + 16, 0);
        frame::finish(&mut req, st);
        s.send(&req).unwrap();
        assert!(
            s.wait_readable(Instant::now() + Duration::from_secs(2))
                .unwrap()
        );
        let mut buf = vec![0u8; 8192];
        let got = s.recv(&mut buf).unwrap();
        assert!(got.from_kernel && !got.truncated);
        let errs: Vec<ack::ErrorMsg> = ack::errors_in(&buf[..got.len]).collect();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].seq, Some(41));
        assert_ne!(errs[0].errno, 0);
    }
}
