//! The Internet checksum (RFC 1071): full computation and incremental update (RFC 1624).
//!
//! Sums are carried in a `u64` and folded to 16 bits only at the end: a 64-bit accumulator
//! cannot overflow for anything shorter than 2^32 words, so the hot loops need no carry
//! handling. Every function is total: none of them panics, whatever the input.

/// Ones-complement sum of `data` read as big-endian 16-bit words, unfolded.
///
/// An odd trailing byte counts as the high byte of a word padded with zero, as RFC 1071
/// prescribes. The result is meant for [`fold`] (or to be added to other unfolded sums).
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    // Adding 32-bit big-endian words and folding later gives the same ones-complement result
    // as adding 16-bit words, because 2^16 - 1 divides 2^32 - 1; with twice as much per add
    // and no data-dependent carries the loop vectorises.
    let mut chunks = data.chunks_exact(8);
    let mut acc: u64 = 0;
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        acc += u64::from(u32::from_be_bytes([c[4], c[5], c[6], c[7]]));
    }
    // The remainder starts at an offset that is a multiple of 8, so word alignment holds.
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds an unfolded sum to 16 bits with end-around carry.
///
/// The result is 0 only when `s` is 0; any other sum folds into `1..=0xFFFF`, which is what
/// makes the incremental and the full computation agree bit for bit.
#[inline]
pub fn fold(s: u64) -> u16 {
    let s = (s & 0xFFFF_FFFF) + (s >> 32);
    let s = (s & 0xFFFF_FFFF) + (s >> 32);
    let s = (s & 0xFFFF) + (s >> 16);
    let s = (s & 0xFFFF) + (s >> 16);
    let s = (s & 0xFFFF) + (s >> 16);
    s as u16
}

/// The checksum field value for data whose unfolded sum (checksum field counted as zero) is `s`.
#[inline]
pub fn finish(s: u64) -> u16 {
    !fold(s)
}

/// Checksum of `data` (RFC 1071), the checksum field being already zero.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// Unfolded sum of the IPv4 pseudo-header (RFC 793/768) for an L4 length `len`.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u64 {
    sum(&src) + sum(&dst) + u64::from(protocol) + u64::from(len)
}

/// Unfolded sum of the IPv6 pseudo-header (RFC 8200 section 8.1) for an upper-layer length
/// `len`.
#[inline]
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, len: u32) -> u64 {
    sum(&src) + sum(&dst) + u64::from(next_header) + u64::from(len >> 16) + u64::from(len & 0xFFFF)
}

/// An accumulated change of 16-bit words, to be applied to checksums (RFC 1624, eqn. 3:
/// `HC' = ~(~HC + ~m + m')`).
///
/// One `Delta` can collect every change that a checksum covers (several addresses, ports,
/// other checksums inside the covered data) and be applied once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    pub const fn new() -> Delta {
        Delta(0)
    }

    /// Records that the 16-bit word `old` becomes `new`.
    #[inline]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Records that a run of bytes becomes another run of the same length, starting at an
    /// even offset of the covered data (addresses are).
    #[inline]
    pub fn bytes(&mut self, old: &[u8], new: &[u8]) {
        // Subtracting in ones-complement is adding the complement: the complement of a sum is
        // the sum of the complements, so the old run can be summed first, then negated.
        self.0 += u64::from(!fold(sum(old))) + sum(new);
    }

    /// Adds another delta (a change that this checksum also covers).
    #[inline]
    pub fn add(&mut self, other: Delta) {
        self.0 += other.0;
    }

    /// True when nothing was recorded (an identity rewrite still records words).
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The checksum field value after the change, given the value before it.
    #[inline]
    pub fn apply(self, csum: u16) -> u16 {
        !fold(u64::from(!csum) + self.0)
    }
}

/// Incremental update of checksum `csum` for one 16-bit word changing from `old` to `new`.
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut d = Delta::new();
    d.word(old, new);
    d.apply(csum)
}

/// Incremental update of checksum `csum` for an address (4 or 16 bytes) changing.
#[inline]
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut d = Delta::new();
    d.bytes(old, new);
    d.apply(csum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the RFC 1071 loop, word by word, written as plainly as possible.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            s += u32::from(data[i]) << 8 | u32::from(data[i + 1]);
            i += 2;
        }
        if i < data.len() {
            s += u32::from(data[i]) << 8;
        }
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn matches_naive_for_all_lengths() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(151) ^ 0xA5) as u8)
            .collect();
        for len in 0..data.len() {
            assert_eq!(checksum(&data[..len]), naive(&data[..len]), "len {len}");
        }
        let ones = [0xFFu8; 77];
        for len in 0..ones.len() {
            assert_eq!(checksum(&ones[..len]), naive(&ones[..len]), "len {len}");
        }
    }

    #[test]
    fn fold_of_large_sums() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xFFFF), 0xFFFF);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(u64::MAX), 0xFFFF);
        assert_eq!(fold(0x1_FFFE), 0xFFFF);
    }

    #[test]
    fn incremental_matches_full() {
        let mut data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        let c0 = checksum(&data);
        let old = [data[10], data[11], data[12], data[13]];
        let new = [0xde, 0xad, 0xbe, 0xef];
        data[10..14].copy_from_slice(&new);
        assert_eq!(update_bytes(c0, &old, &new), checksum(&data));
        let w_old = u16::from_be_bytes([data[20], data[21]]);
        data[20..22].copy_from_slice(&0x1234u16.to_be_bytes());
        let c1 = checksum(&data);
        assert_eq!(update16(update_bytes(c0, &old, &new), w_old, 0x1234), c1);
    }

    #[test]
    fn pseudo_headers() {
        let v4 = pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 40);
        assert_eq!(fold(v4), fold(0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 40));
        let v6 = pseudo_header_v6([0; 16], [0; 16], 17, 0x1_0002);
        assert_eq!(fold(v6), 17 + 1 + 2);
    }
}
