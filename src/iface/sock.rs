//! The rtnetlink socket shared by the watcher and the snapshot's dumps: plain libc calls on a
//! descriptor we own.
//!
//! Opened here rather than with `mnl::Socket` because libmnl's `mnl_socket_open` sets neither
//! close-on-exec nor non-blocking at creation and mnl 0.3.1 offers no way to pass flags or
//! wrap an existing descriptor: a child process started by another thread would inherit the
//! socket. What mnl would add on top (send, recv) is one libc call each.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// An rtnetlink socket, close-on-exec and non-blocking, bound to `groups` (RTMGRP_* bits) with
/// a port id the kernel chooses.
pub(crate) fn open(groups: u32) -> io::Result<OwnedFd> {
    open_netlink(libc::NETLINK_ROUTE, libc::SOCK_NONBLOCK, groups)
}

/// A close-on-exec netlink socket of `protocol` (with extra `flags` such as SOCK_NONBLOCK),
/// bound to `groups` with a port id the kernel chooses. Also the nft session's socket, for the
/// same reason (libmnl's would leak into child processes).
pub(crate) fn open_netlink(protocol: i32, flags: i32, groups: u32) -> io::Result<OwnedFd> {
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
    // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 lets the kernel pick the port id.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a live sockaddr_nl and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The port id the kernel gave the socket (replies to our requests carry it).
pub(crate) fn port_id(fd: &OwnedFd) -> io::Result<u32> {
    // SAFETY: an all-zero sockaddr_nl is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are live and `len` holds the size of `addr`.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_nl).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(addr.nl_pid)
}

/// Asks for a receive buffer of `bytes` (the kernel doubles it and applies its limits).
/// SO_RCVBUFFORCE is tried first so that a privileged daemon may exceed rmem_max.
pub(crate) fn set_rcvbuf(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: `v` is a live c_int and its size is passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) == 0 || set(libc::SO_RCVBUF) == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends one datagram to the kernel.
pub(crate) fn send(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_nl addresses the kernel (port id 0, no groups).
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: `bytes` and `to` are live for the call and their exact sizes are passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One received datagram.
pub(crate) struct Received {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer: the stored part is cut short.
    pub truncated: bool,
    /// Sent by the kernel (port id 0). Any local process may send us unicast netlink; only the
    /// kernel's word counts.
    pub from_kernel: bool,
}

/// Receives one datagram without blocking (the socket is non-blocking): `WouldBlock` when
/// none is waiting; ENOBUFS is returned as the error it is, for the caller to judge.
pub(crate) fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Received> {
    loop {
        // SAFETY: an all-zero sockaddr_nl is valid.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `buf`, `from` and `from_len` are live and their sizes are passed. MSG_TRUNC
        // makes the return value the datagram's real length, so truncation is visible.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
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

/// Waits until the socket is readable or `deadline` passes; false on timeout.
pub(crate) fn wait_readable(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = left
            .max(Duration::from_millis(1))
            .as_millis()
            .min(i32::MAX as u128) as libc::c_int;
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, count 1.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The name of the interface with this index now (if_indextoname(3)); `None` for 0 or a gone
/// interface. For log records about packets that belong to no service.
pub fn name_of(index: u32) -> Option<String> {
    if index == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write, NUL included.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
