//! The receive side of one queue: `count` buffers in one mapping, filled by one `recvmmsg`.
//! The `unsafe` of the queue beyond [`crate::netlink::Socket`] lives here.

use std::io;
use std::os::fd::RawFd;

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
