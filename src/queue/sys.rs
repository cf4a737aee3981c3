//! The few libc calls the queue needs beyond what `mnl` wraps: socket options, non-blocking
//! mode, poll, and the batched `recvmmsg`/`sendmsg`. Every `unsafe` block of the queue lives
//! here.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

// Not exported by `libc` for every Linux target; the values are the generic asm/socket.h ones
// used by x86, arm and the other mainstream architectures (mips/sparc/parisc differ).
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;
/// `linux/netlink.h`.
pub const NETLINK_NO_ENOBUFS: libc::c_int = 5;
pub const NETLINK_CAP_ACK: libc::c_int = 10;

pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `val` is a live c_int on the stack and the length passed is its size; the
    // kernel only reads from the pointer. An invalid fd is reported as EBADF, not UB.
    let rc = unsafe {
        libc::setsockopt(
            fd,
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

pub fn getsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are live locals; `len` tells the kernel how much it may write.
    let rc = unsafe {
        libc::getsockopt(
            fd,
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

/// Sets a socket buffer size, privileged variant first: `SO_*BUFFORCE` ignores the
/// `net.core.[rw]mem_max` ceiling (64 KiB on many hosts, far below what a burst needs) but
/// needs CAP_NET_ADMIN; the plain option is clamped to that ceiling. Returns the size the kernel
/// actually granted (it reports twice the requested value, for its bookkeeping overhead).
pub fn set_buffer(fd: RawFd, recv: bool, bytes: usize) -> io::Result<usize> {
    let val = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    let (force, plain) = if recv {
        (SO_RCVBUFFORCE, libc::SO_RCVBUF)
    } else {
        (SO_SNDBUFFORCE, libc::SO_SNDBUF)
    };
    if setsockopt_int(fd, libc::SOL_SOCKET, force, val).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, plain, val)?;
    }
    Ok(getsockopt_int(fd, libc::SOL_SOCKET, plain)?.max(0) as usize)
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes and returns plain integers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets close-on-exec: libmnl's `mnl_socket_open` does not, and a child process (a hook
/// script, an `nft` run by anyone in the process) would otherwise keep the queue bound.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFD/F_SETFD takes and returns plain integers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable (or has a pending error). `Ok(false)` on timeout or EINTR.
pub fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    poll_readable_or(fd, -1, timeout)
}

/// Like [`poll_readable`], but also returns (`Ok(false)`) as soon as `wake` is readable or
/// hung up; a negative `wake` is ignored.
pub fn poll_readable_or(fd: RawFd, wake: RawFd, timeout: Duration) -> io::Result<bool> {
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

/// The receive buffers of one queue: `count` slots of `slot` bytes in one anonymous mapping,
/// with the `recvmmsg` headers that point at them, built once and reused by every receive.
///
/// A mapping of its own, populated at once: a queue's memory is all there from the start and
/// does not grow with traffic (bursts reach the last slots only now and then, which would
/// otherwise look like a slow leak), and it never shares pages with the heap.
pub struct RecvArea {
    base: *mut u8,
    slot: usize,
    count: usize,
    /// Boxed, so their addresses stay put when the area moves: `hdrs` point into `iovs`.
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the area exclusively owns its mapping and the pointers into it; nothing in it is
// tied to a thread. It is not Sync: receiving needs `&mut self`.
unsafe impl Send for RecvArea {}

impl RecvArea {
    pub fn new(count: usize, slot: usize) -> io::Result<RecvArea> {
        let len = count.max(1) * slot.max(1);
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        let mut iovs: Box<[libc::iovec]> = (0..count)
            .map(|i| libc::iovec {
                // SAFETY: slot i lies inside the mapping of count * slot bytes.
                iov_base: unsafe { base.add(i * slot) }.cast(),
                iov_len: slot,
            })
            .collect();
        // SAFETY: mmsghdr is plain data for which all-zero is a valid (empty) value.
        let mut hdrs: Box<[libc::mmsghdr]> =
            (0..count).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        Ok(RecvArea {
            base,
            slot,
            count,
            iovs,
            hdrs,
        })
    }

    pub fn slot(&self, i: usize) -> &[u8] {
        assert!(i < self.count);
        // SAFETY: slot i is inside the mapping, which lives as long as `self`; the shared
        // borrow of `self` excludes writers.
        unsafe { std::slice::from_raw_parts(self.base.add(i * self.slot), self.slot) }
    }

    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(i < self.count);
        // SAFETY: as in `slot`, and the exclusive borrow of `self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(i * self.slot), self.slot) }
    }

    /// Receives up to `n` datagrams without blocking, one per slot from the first. Writes
    /// each datagram's length to `lens` and whether it was cut short (MSG_TRUNC) to `trunc`.
    /// Returns the number received; `WouldBlock` when none was waiting.
    pub fn recv(
        &mut self,
        fd: RawFd,
        n: usize,
        lens: &mut [usize],
        trunc: &mut [bool],
    ) -> io::Result<usize> {
        let n = n.min(self.count).min(lens.len()).min(trunc.len());
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `hdrs` holds `n` initialised headers, each pointing at its iovec in `iovs`,
        // which describes a slot of the mapping; all live as long as `self`, borrowed
        // exclusively. A null timeout is allowed; MSG_DONTWAIT makes the call non-blocking.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = rc as usize;
        for i in 0..got {
            let h = &self.hdrs[i];
            lens[i] = (h.msg_len as usize).min(self.iovs[i].iov_len);
            trunc[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(got)
    }
}

impl Drop for RecvArea {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is unmapped once; no
        // slice into it outlives `self`.
        unsafe {
            libc::munmap(self.base.cast(), self.count.max(1) * self.slot.max(1));
        }
    }
}

/// An iovec describing `part`, for [`send_iov`] (which only reads through it).
pub fn iovec(part: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: part.as_ptr() as *mut libc::c_void,
        iov_len: part.len(),
    }
}

/// Sends the concatenation of `parts` as one datagram to the kernel (netlink port 0) with one
/// `sendmsg`. Returns the number of bytes sent.
pub fn send_parts(fd: RawFd, parts: &[&[u8]]) -> io::Result<usize> {
    let iovs: Vec<libc::iovec> = parts.iter().map(|p| iovec(p)).collect();
    // SAFETY: the iovecs describe `parts`, borrowed for the call.
    unsafe { send_iov(fd, &iovs) }
}

/// [`send_parts`] over iovecs the caller built (the verdict path reuses one vector of them,
/// so that sending a batch allocates nothing).
///
/// # Safety
/// SAFETY: every iovec must describe memory that is valid for reads for the duration of the
/// call.
pub unsafe fn send_iov(fd: RawFd, iovs: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: sockaddr_nl is plain data; all-zero plus the family is "the kernel, no groups".
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
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
