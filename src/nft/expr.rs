//! nftables expressions that `nftnl` 0.9.4 does not ship: the native `queue`, the xtables
//! NFQUEUE target through nft_compat, `fib`, and meta/payload loads into a chosen register (the
//! components of a concatenated set key go into consecutive registers; nftnl's own loads always
//! target register 1). Each builds a libnftnl expression object with
//! raw `nftnl_sys` calls; libnftnl turns it into netlink attributes (in network byte order where
//! the kernel expects it).

use std::ptr::NonNull;

use nftnl::Rule;
use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;

/// Length of an interface name as `meta iifname` loads it (IFNAMSIZ, linux/if.h).
pub const IFNAMSIZ: usize = 16;

// From linux/netfilter/nf_tables.h (not in the libc crate).
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFTA_FIB_F_IIF: u32 = 1 << 3;

/// `RTN_LOCAL`, the route type `fib ... type local` compares with.
pub const RTN_LOCAL: u32 = libc::RTN_LOCAL as u32;

/// The interface name as the kernel stores it: zero-padded to IFNAMSIZ, so that the compare
/// matches this name exactly (not as a prefix). Longer names are cut here; `install` refuses
/// them before building anything, because a cut name would match a different interface.
pub fn ifname_bytes(name: &str) -> [u8; IFNAMSIZ] {
    let mut b = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

/// Allocate an expression of the given type, aborting on allocation failure like `nftnl` does
/// (there is nothing sensible left to do when a few bytes cannot be allocated).
fn alloc(name: &std::ffi::CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: `name` is a valid NUL-terminated string that libnftnl only reads during the call.
    let p = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
    NonNull::new(p).unwrap_or_else(|| std::process::abort())
}

/// The native `queue` expression (nft_queue): `queue num N[-M] [bypass] [fanout]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeQueue {
    pub num: u16,
    pub total: u16,
    pub flags: u16,
}

impl Expression for NativeQueue {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc(c"queue");
        // SAFETY: `expr` is a live queue expression just allocated; the queue attributes are u16
        // in libnftnl (it converts them to network order when building the message).
        unsafe {
            sys::nftnl_expr_set_u16(expr.as_ptr(), sys::NFTNL_EXPR_QUEUE_NUM as u16, self.num);
            sys::nftnl_expr_set_u16(
                expr.as_ptr(),
                sys::NFTNL_EXPR_QUEUE_TOTAL as u16,
                self.total.max(1),
            );
            sys::nftnl_expr_set_u16(
                expr.as_ptr(),
                sys::NFTNL_EXPR_QUEUE_FLAGS as u16,
                self.flags,
            );
        }
        expr
    }
}

/// xtables target name and revision of the compat form.
pub const NFQUEUE_TARGET: &std::ffi::CStr = c"NFQUEUE";
pub const NFQUEUE_REVISION: u32 = 3;

/// `struct xt_NFQ_info_v3` in host byte order: what the xtables NFQUEUE target revision 3
/// expects as its info blob.
pub fn nfqueue_v3_info(num: u16, total: u16, flags: u16) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&num.to_ne_bytes());
    b[2..4].copy_from_slice(&total.max(1).to_ne_bytes());
    b[4..6].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// The same verdict through nft_compat: the xtables NFQUEUE target, for kernels built without
/// nft_queue (such as the one this project is tested on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompatNfqueue {
    pub num: u16,
    pub total: u16,
    pub flags: u16,
}

impl Expression for CompatNfqueue {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc(c"target");
        let info = nfqueue_v3_info(self.num, self.total, self.flags);
        // SAFETY: `expr` is a live target expression. The name is a NUL-terminated string that
        // libnftnl copies. The info buffer is allocated with C malloc because libnftnl keeps the
        // pointer (it does not copy it) and releases it with free() when the expression is
        // freed; we write exactly `info.len()` bytes into a buffer of that size. If libnftnl
        // refuses the attribute it has not taken the buffer, so we free it ourselves.
        unsafe {
            sys::nftnl_expr_set_str(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_NAME as u16,
                NFQUEUE_TARGET.as_ptr(),
            );
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_REV as u16,
                NFQUEUE_REVISION,
            );
            let buf = libc::malloc(info.len()).cast::<u8>();
            if buf.is_null() {
                std::process::abort();
            }
            std::ptr::copy_nonoverlapping(info.as_ptr(), buf, info.len());
            let rc = sys::nftnl_expr_set(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_INFO as u16,
                buf.cast(),
                info.len() as u32,
            );
            if rc < 0 {
                libc::free(buf.cast());
            }
        }
        expr
    }
}

/// `fib daddr . iif type`: route type of the destination address, looked up for the incoming
/// interface, into register 1 (compare with [`RTN_LOCAL`] as a native-order u32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FibDaddrIifType;

impl Expression for FibDaddrIifType {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc(c"fib");
        let flags = NFTA_FIB_F_DADDR | NFTA_FIB_F_IIF;
        // SAFETY: `expr` is a live fib expression; its attributes are u32 in libnftnl.
        unsafe {
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_FIB_RESULT as u16,
                NFT_FIB_RESULT_ADDRTYPE,
            );
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_FIB_FLAGS as u16, flags);
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_FIB_DREG as u16,
                libc::NFT_REG_1 as u32,
            );
        }
        expr
    }
}

/// A conntrack key (`NFT_CT_*`: `ct direction`, `ct label`) loaded into register 1, or with
/// `set`, set from it (`ct label set`: the kernel sets the label bits that are set in the
/// register and leaves the others). nftnl's own `ct` expression knows only state, status and
/// mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ct {
    pub key: u32,
    pub set: bool,
}

impl Expression for Ct {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc(c"ct");
        let reg = if self.set {
            sys::NFTNL_EXPR_CT_SREG
        } else {
            sys::NFTNL_EXPR_CT_DREG
        };
        // SAFETY: `expr` is a live ct expression; key and register are u32 attributes.
        unsafe {
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_CT_KEY as u16, self.key);
            sys::nftnl_expr_set_u32(expr.as_ptr(), reg as u16, libc::NFT_REG_1 as u32);
        }
        expr
    }
}

/// Label bit `bit` as the 16-byte value `ct label` loads and `ct label set` takes: the kernel's
/// label bitmap, as four native-order 32-bit words with bit n in word n / 32 (what nft itself
/// sends: `nft --debug=netlink` shows label 127 as `0x00000000 0x00000000 0x00000000 0x80000000`).
pub fn ct_label_bytes(bit: u8) -> [u8; 16] {
    let mut words = [0u32; 4];
    words[usize::from(bit / 32)] = 1 << (bit % 32);
    let mut out = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// Where a [`Load`] reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A meta key (`NFT_META_*`), e.g. iifname or l4proto.
    Meta(u32),
    /// Bytes of the network header.
    Network { offset: u32, len: u32 },
    /// Bytes of the transport header.
    Transport { offset: u32, len: u32 },
}

/// A meta or payload load into the 32-bit register `dreg` (an `NFT_REG32_*` number). The kernel
/// zeroes the unused bytes of the last register a short load touches, which is what lets a set
/// element's padding bytes be plain zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub source: Source,
    pub dreg: u32,
}

/// The 32-bit register holding byte `offset` of a key loaded from register `NFT_REG32_00` on
/// (`offset` is a multiple of 4: every key component starts a register).
pub fn reg32_at(offset: usize) -> u32 {
    debug_assert_eq!(offset % 4, 0);
    libc::NFT_REG32_00 as u32 + (offset / 4) as u32
}

impl Expression for Load {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        match self.source {
            Source::Meta(key) => {
                let expr = alloc(c"meta");
                // SAFETY: `expr` is a live meta expression; its key and dreg attributes are u32.
                unsafe {
                    sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_META_KEY as u16, key);
                    sys::nftnl_expr_set_u32(
                        expr.as_ptr(),
                        sys::NFTNL_EXPR_META_DREG as u16,
                        self.dreg,
                    );
                }
                expr
            }
            Source::Network { offset, len } | Source::Transport { offset, len } => {
                let base = match self.source {
                    Source::Network { .. } => libc::NFT_PAYLOAD_NETWORK_HEADER,
                    _ => libc::NFT_PAYLOAD_TRANSPORT_HEADER,
                } as u32;
                let expr = alloc(c"payload");
                // SAFETY: `expr` is a live payload expression; base, offset, length and dreg
                // are u32 attributes (offset and length in bytes).
                unsafe {
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, offset);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, len);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, self.dreg);
                }
                expr
            }
        }
    }
}

/// A map lookup (`k1 . k2 ... map @name`): the key read from 32-bit registers from `sreg` on,
/// the element's data written to consecutive 32-bit registers from `dreg` on (the kernel reads
/// the whole key before it writes the data, so the two may overlap). No match: the rule stops.
/// nftnl's `Lookup` has no data register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLookup {
    pub map: std::ffi::CString,
    /// Batch id of the map, for a map created in the same batch.
    pub map_id: u32,
    pub sreg: u32,
    pub dreg: u32,
}

impl Expression for MapLookup {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc(c"lookup");
        // SAFETY: `expr` is a live lookup expression; the name is copied, the rest are u32.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.map.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, self.map_id);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, self.sreg);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_DREG as u16, self.dreg);
        }
        expr
    }
}

/// `NFT_PAYLOAD_CSUM_INET`: update an Internet checksum at `csum_offset` (from the header the
/// write's base names) for the bytes written.
pub const CSUM_INET: u32 = 1;
/// `NFT_PAYLOAD_L4CSUM_PSEUDOHDR`: the bytes are part of the pseudo-header; also update the
/// transport checksum (the kernel finds it, knows UDP's "no checksum" and CHECKSUM_PARTIAL).
pub const L4CSUM_PSEUDOHDR: u32 = 1;

/// A payload write (`ip daddr set ...`, `th dport set ...`): `len` bytes from register `sreg`
/// into the packet, with the checksum updates asked for. The kernel makes only the headers
/// writable and keeps GSO and CHECKSUM_PARTIAL packets as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadWrite {
    /// The transport header's bytes (else the network header's).
    pub transport: bool,
    pub offset: u32,
    pub len: u32,
    pub sreg: u32,
    pub csum_type: u32,
    pub csum_offset: u32,
    pub csum_flags: u32,
}

impl Expression for PayloadWrite {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let base = if self.transport {
            libc::NFT_PAYLOAD_TRANSPORT_HEADER
        } else {
            libc::NFT_PAYLOAD_NETWORK_HEADER
        };
        let expr = alloc(c"payload");
        // SAFETY: `expr` is a live payload expression; every attribute set is a u32.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base as u32);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, self.offset);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, self.len);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_SREG as u16, self.sreg);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_CSUM_TYPE as u16, self.csum_type);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_PAYLOAD_CSUM_OFFSET as u16,
                self.csum_offset,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_FLAGS as u16, self.csum_flags);
        }
        expr
    }
}

/// What a [`Dynset`] does with the key (`NFT_DYNSET_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DynsetOp {
    /// `add @set { key }`: insert unless present (no timeout refresh).
    Add = 0,
    /// `update @set { key }`: insert or refresh the timeout; either way the element's own
    /// expressions (its counter) see the packet.
    Update = 1,
    /// `delete @set { key }`: remove if present.
    Delete = 2,
}

/// A set update from the packet path (nft_dynset): the key from 32-bit registers from `sreg`
/// on. A set that is full makes the rule stop there (NFT_BREAK), as a failed match does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dynset {
    pub set: std::ffi::CString,
    /// Batch id of the set, for a set created in the same batch.
    pub set_id: u32,
    pub op: DynsetOp,
    pub sreg: u32,
}

impl Expression for Dynset {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc(c"dynset");
        // SAFETY: `expr` is a live dynset expression; the name is copied, the rest are u32.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_DYNSET_SET_NAME as u16, self.set.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_SET_ID as u16, self.set_id);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_OP as u16, self.op as u32);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_SREG_KEY as u16, self.sreg);
        }
        expr
    }
}

/// `key != @set`: a set lookup that matches when the key is absent (NFT_LOOKUP_F_INV).
/// nftnl's `Lookup` has no inversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotInSet {
    pub set: std::ffi::CString,
    pub set_id: u32,
    pub sreg: u32,
}

impl Expression for NotInSet {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc(c"lookup");
        // SAFETY: `expr` is a live lookup expression; the name is copied, the rest are u32.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.set.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, self.set_id);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, self.sreg);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_FLAGS as u16, NFT_LOOKUP_F_INV);
        }
        expr
    }
}

/// `NFT_LOOKUP_F_INV` from linux/netfilter/nf_tables.h.
const NFT_LOOKUP_F_INV: u32 = 1;

/// A fresh `counter` expression object, for a set whose every element counts its packets and
/// bytes (the set takes ownership of it).
pub fn counter_expr() -> NonNull<sys::nftnl_expr> {
    alloc(c"counter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_is_zero_padded() {
        let b = ifname_bytes("pub0");
        assert_eq!(&b[..4], b"pub0");
        assert!(b[4..].iter().all(|&x| x == 0));
        // A 15-byte name keeps its terminating zero.
        let b = ifname_bytes("abcdefghijklmnopq");
        assert_eq!(&b[..15], b"abcdefghijklmno");
        assert_eq!(b[15], 0);
    }

    #[test]
    fn key_registers_are_consecutive_32_bit_registers() {
        // NFT_REG32_00 is the first 32-bit view of the 128-bit register NFT_REG_1.
        assert_eq!(reg32_at(0), 8);
        assert_eq!(reg32_at(16), 12);
        assert_eq!(reg32_at(36), 17);
    }

    #[test]
    fn nfqueue_info_layout() {
        let b = nfqueue_v3_info(0x1234, 0, 2);
        assert_eq!(&b[0..2], &0x1234u16.to_ne_bytes());
        assert_eq!(&b[2..4], &1u16.to_ne_bytes(), "total is at least 1");
        assert_eq!(&b[4..6], &2u16.to_ne_bytes());
        assert_eq!(&b[6..8], &[0, 0]);
    }
}
