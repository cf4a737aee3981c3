//! Named header fields: the offsets (each relative to the start of its own header), lengths and
//! bits that netnat reads or writes, so that parsing and rewriting never spell a bare number.
//! Constants only, from the RFCs named at each group; nothing here reads a buffer.

/// A queued packet starts at its IP header: the offset of the (outer) IP header.
pub const PACKET_IP: usize = 0;

/// Checksums, ports and length fields are 16-bit words.
pub const WORD_LEN: usize = 2;

/// The version nibble, the high four bits of the first byte of both IP headers.
pub const VERSION_SHIFT: u8 = 4;
pub const VERSION_4: u8 = 4;
pub const VERSION_6: u8 = 6;

/// IP protocol numbers netnat handles (IANA "Assigned Internet Protocol Numbers").
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// The IPv4 header (RFC 791 section 3.1).
pub mod ipv4 {
    /// Version (high nibble) and header length in 32-bit words (low nibble, the IHL).
    pub const VERSION_IHL: usize = 0;
    pub const IHL_MASK: u8 = 0x0F;
    /// The IHL counts 32-bit words.
    pub const IHL_UNIT: usize = 4;
    pub const TOTAL_LEN: usize = 2;
    /// Flags (3 bits) and fragment offset (13 bits), one 16-bit word.
    pub const FRAGMENT: usize = 6;
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    pub const FRAGMENT_OFFSET: u16 = 0x1FFF;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const ADDR_LEN: usize = 4;
    /// The header without options (IHL 5).
    pub const MIN_LEN: usize = 20;
}

/// The IPv6 fixed header (RFC 8200 section 3) and the extension headers netnat walks over
/// (RFC 8200 section 4, RFC 4302).
pub mod ipv6 {
    /// Length of everything after the fixed header.
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    pub const ADDR_LEN: usize = 16;
    /// The fixed header.
    pub const LEN: usize = 40;

    /// Extension header numbers, and the fields netnat reads in them.
    pub mod ext {
        pub const HOP_BY_HOP: u8 = 0;
        pub const ROUTING: u8 = 43;
        pub const FRAGMENT: u8 = 44;
        pub const AUTH_HEADER: u8 = 51;
        pub const NO_NEXT_HEADER: u8 = 59;
        pub const DEST_OPTIONS: u8 = 60;

        /// Every extension header starts with the next header's number.
        pub const NEXT: usize = 0;
        /// Hop-by-hop, routing, destination options: length in 8-byte units, not counting
        /// the first; the authentication header: in 4-byte units, not counting the first two.
        pub const LEN: usize = 1;
        pub const OPTIONS_UNIT: usize = 8;
        pub const AUTH_UNIT: usize = 4;
        /// Routing header: segments left.
        pub const SEGMENTS_LEFT: usize = 3;
        /// Fragment header: offset (13 high bits), two reserved bits, M (lowest bit).
        pub const FRAGMENT_WORD: usize = 2;
        pub const FRAGMENT_OFFSET_SHIFT: u16 = 3;
        pub const MORE_FRAGMENTS: u16 = 0x0001;
        pub const FRAGMENT_LEN: usize = 8;
    }
}

/// The ports, the first two words of both TCP and UDP.
pub mod ports {
    pub const SRC: usize = 0;
    pub const DST: usize = 2;
    /// Bytes that hold both ports.
    pub const LEN: usize = 4;
}

/// The TCP header (RFC 9293 section 3.1).
pub mod tcp {
    /// Data offset: header length in 32-bit words, the high nibble.
    pub const DATA_OFFSET: usize = 12;
    pub const DATA_OFFSET_SHIFT: u8 = 4;
    pub const DATA_OFFSET_UNIT: usize = 4;
    pub const FLAGS: usize = 13;
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;
    pub const CHECKSUM: usize = 16;
    /// The header without options (data offset 5).
    pub const MIN_LEN: usize = 20;
}

/// The UDP header (RFC 768).
pub mod udp {
    /// Length of header and data.
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const LEN: usize = 8;
    /// Over IPv4, a checksum field of 0 means "no checksum"; a computed 0 is sent as this.
    pub const NO_CHECKSUM: u16 = 0;
    pub const ZERO_SENT_AS: u16 = 0xFFFF;
}

/// The ICMP (RFC 792) and ICMPv6 (RFC 4443) header: type, code, checksum, then 4 bytes that
/// depend on the type; an error message quotes the offending packet after them.
pub mod icmp {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const LEN: usize = 8;
    /// Bytes of the offending packet's transport part that every error quotes at least
    /// (RFC 792: "the first 64 bits of the original datagram's data"): the ports among them.
    pub const QUOTED_L4_MIN: usize = 8;

    /// ICMPv4 errors: destination unreachable, time exceeded, parameter problem.
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAMETER_PROBLEM: u8 = 12;
    /// ICMPv6 errors: destination unreachable (1), packet too big, time exceeded, parameter
    /// problem (4).
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    pub const V6_PARAMETER_PROBLEM: u8 = 4;
}
