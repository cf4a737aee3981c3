//! Checked byte-field access.
//!
//! Parsing reads through the `Option` getters and turns `None` into `Malformed::Truncated`.
//! Writing happens only after validation, so the setters cannot miss; they still refuse an
//! out-of-range offset (and flag it in debug builds, where fuzzing and tests run) rather than
//! panic in production.

use std::ops::Range;

use super::header::WORD_LEN;

/// The byte at `off`.
#[inline]
pub fn u8_at(buf: &[u8], off: usize) -> Option<u8> {
    buf.get(off).copied()
}

/// The big-endian 16-bit word at `off`.
#[inline]
pub fn be16(buf: &[u8], off: usize) -> Option<u16> {
    match buf.get(off..off.checked_add(WORD_LEN)?)? {
        [a, b] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Writes the big-endian 16-bit word `v` at `off`.
#[inline]
pub fn put16(buf: &mut [u8], off: usize, v: u16) {
    match off
        .checked_add(WORD_LEN)
        .and_then(|end| buf.get_mut(off..end))
    {
        Some(dst) => dst.copy_from_slice(&v.to_be_bytes()),
        None => debug_assert!(false, "put16 outside a validated packet"),
    }
}

/// The 16-bit word at a validated offset (0 if, against the validation, it is not there).
#[inline]
pub fn get16(buf: &[u8], off: usize) -> u16 {
    let v = be16(buf, off);
    debug_assert!(v.is_some(), "get16 outside a validated packet");
    v.unwrap_or(0)
}

/// Copies `src` over the validated range `r`.
#[inline]
pub fn put_bytes(buf: &mut [u8], r: Range<usize>, src: &[u8]) {
    match buf.get_mut(r) {
        Some(dst) if dst.len() == src.len() => dst.copy_from_slice(src),
        _ => debug_assert!(false, "put_bytes outside a validated packet"),
    }
}
