//! Set elements, encoded by hand: one NEWSETELEM message per run of elements, straight from
//! the policy's compact elements, and each element's key as the lookup sees the registers.
//!
//! May use: [`crate::netlink::frame`] for attributes, `nftnl_sys` for the message header,
//! `policy` and `expr` for the key layout.

use std::ffi::{CStr, c_void};
use std::net::IpAddr;
use std::os::raw::c_char;

use nftnl::nftnl_sys as sys;
use nftnl::{MsgType, NlMsg, ProtoFamily};

use super::expr::ifname_bytes;
use super::sets::{Element, KeyField, SetKind, SetSpec, key_len};
use crate::netlink::frame::{NLA_HDRLEN, NLA_MAX_LEN, end_nest, put_attr, start_attr, start_nest};

/// Appends a set element's key as the lookup sees the registers: each component in the byte
/// order its load produces (interface names zero-padded to IFNAMSIZ, addresses and ports in
/// network order, the protocol as one byte), each padded with zeros to a multiple of 4 bytes.
pub(super) fn push_element_key(out: &mut Vec<u8>, set: &SetSpec, e: &Element) {
    for field in set.kind.key() {
        let start = out.len();
        match field {
            KeyField::IifName | KeyField::OifName => {
                out.extend_from_slice(&ifname_bytes(set.ifname(e)))
            }
            KeyField::Daddr(_) | KeyField::Saddr(_) => match e.addr {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            },
            KeyField::L4Proto => out.push(e.proto),
            KeyField::Dport | KeyField::Sport => out.extend_from_slice(&e.port.to_be_bytes()),
            // Only in the offload sets, which the kernel fills (see `KeyField::Iif`).
            KeyField::Iif | KeyField::Oif | KeyField::Ports => out.extend_from_slice(&[0; 4]),
        }
        debug_assert_eq!(out.len() - start, field.loaded_len(), "{field:?} {e:?}");
        out.resize(start + field.padded_len(), 0);
    }
}

// nf_tables netlink attributes of a NEWSETELEM message (linux/netfilter/nf_tables.h).
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;

/// Bytes one element takes in the element list: its nest, the key nest, the value attribute.
pub(super) fn element_attr_len(kind: SetKind) -> usize {
    3 * NLA_HDRLEN + key_len(kind.key()).next_multiple_of(4)
}

/// How many elements of `kind` fit in one NEWSETELEM message: the element list is one
/// attribute, whose length field is 16 bits.
pub(super) fn elements_per_msg(kind: SetKind) -> usize {
    (NLA_MAX_LEN - NLA_HDRLEN) / element_attr_len(kind)
}

/// One NEWSETELEM message with a run of a set's elements, encoded straight from the policy's
/// compact elements: no per-element libnftnl object or key buffer is made, which for 10,000
/// services would take several MiB. The layout is libnftnl's (`nft --debug=netlink` shows the
/// same): set name, batch id of the set and table, then the element list, each element a nest
/// holding its key. A unit test checks the bytes against libnftnl's.
pub(super) struct ElementsMsg<'a> {
    pub(super) table: &'a CStr,
    /// The set's name (a map's differs from its key layout's set).
    pub(super) name: &'a str,
    pub(super) set: &'a SetSpec,
    /// The elements of this message: at most [`elements_per_msg`].
    pub(super) elements: &'a [Element],
    /// For a map: each element's data, `elements.len()` values of one length, back to back.
    pub(super) data: Option<(&'a [u8], usize)>,
    pub(super) id: u32,
}

impl ElementsMsg<'_> {
    /// The attributes after nfgenmsg.
    fn payload(&self) -> Vec<u8> {
        let kind = self.set.kind;
        let mut out =
            Vec::with_capacity(64 + self.elements.len() * element_attr_len(kind) + NLA_HDRLEN);
        let mut name = self.name.as_bytes().to_vec();
        name.push(0);
        put_attr(&mut out, NFTA_SET_ELEM_LIST_SET, &name);
        put_attr(&mut out, NFTA_SET_ELEM_LIST_SET_ID, &self.id.to_be_bytes());
        put_attr(
            &mut out,
            NFTA_SET_ELEM_LIST_TABLE,
            self.table.to_bytes_with_nul(),
        );
        let list = start_nest(&mut out, NFTA_SET_ELEM_LIST_ELEMENTS);
        for (i, e) in self.elements.iter().enumerate() {
            // libnftnl numbers the element nests from 1 in each message (nft itself uses
            // NFTA_LIST_ELEM); the kernel does not look at the type.
            let elem = start_nest(&mut out, (i + 1) as u16);
            let key = start_nest(&mut out, NFTA_SET_ELEM_KEY);
            // A plain attribute, not a nest, whose value the key is.
            let value = start_attr(&mut out, NFTA_DATA_VALUE);
            push_element_key(&mut out, self.set, e);
            end_nest(&mut out, value);
            end_nest(&mut out, key);
            if let Some((data, len)) = self.data {
                let nest = start_nest(&mut out, NFTA_SET_ELEM_DATA);
                let value = start_attr(&mut out, NFTA_DATA_VALUE);
                out.extend_from_slice(data.get(i * len..(i + 1) * len).unwrap_or_default());
                end_nest(&mut out, value);
                end_nest(&mut out, nest);
            }
            end_nest(&mut out, elem);
        }
        end_nest(&mut out, list);
        out
    }
}

// SAFETY: the element list is one attribute (at most 64 KiB, `elements_per_msg`), the rest a
// header and three short attributes: within the maximum message size the batch reserves.
unsafe impl NlMsg for ElementsMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        let payload = self.payload();
        assert!(
            payload.len() <= NLA_MAX_LEN + 256,
            "element message too long"
        );
        // SAFETY: the caller (nftnl's Batch) gives a buffer with room for a maximal message
        // (64 KiB and a page); the header builder writes nlmsghdr and nfgenmsg at its start
        // and the payload is copied right after them, within that room.
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_NEWSETELEM as u16,
                ProtoFamily::Inet as u16,
                (libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK) as u16,
                seq,
            );
            let at = (*hdr).nlmsg_len as usize;
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                buf.cast::<u8>().add(at),
                payload.len(),
            );
            (*hdr).nlmsg_len = (at + payload.len()) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use nftnl::set::{Set, SetKey};
    use nftnl::{Batch, Table};

    use super::super::family::Family;
    use super::super::sets::KeyValue;
    use super::super::walk::*;
    use super::*;

    /// The key of a one-element set, as the batch encodes it.
    fn element_key(kind: SetKind, values: &[KeyValue]) -> Vec<u8> {
        let set = SetSpec::from_values(kind, &[values.to_vec()]);
        let mut out = Vec::new();
        push_element_key(&mut out, &set, &set.raw()[0]);
        out
    }

    #[test]
    fn element_keys_are_padded_per_component() {
        let k = element_key(
            SetKind::In4,
            &[
                KeyValue::IfName("pub0".into()),
                KeyValue::Addr("10.99.1.1".parse().unwrap()),
                KeyValue::Proto(6),
                KeyValue::Port(80),
            ],
        );
        let mut want = b"pub0".to_vec();
        want.resize(16, 0);
        want.extend([10, 99, 1, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(k, want, "the layout nft itself sends (nft --debug=netlink)");
        let k = element_key(
            SetKind::Out6,
            &[
                KeyValue::IfName("ppp0".into()),
                KeyValue::Addr("fd00::10".parse().unwrap()),
                KeyValue::Proto(17),
                KeyValue::Port(4443),
            ],
        );
        assert_eq!(k.len(), key_len(SetKind::Out6.key()));
        assert_eq!(&k[16..18], &[0xfd, 0]);
        assert_eq!(&k[32..40], &[17, 0, 0, 0, 0x11, 0x5b, 0, 0]);
        let k = element_key(
            SetKind::In4Local,
            &[
                KeyValue::IfName("ppp0".into()),
                KeyValue::Proto(17),
                KeyValue::Port(53),
            ],
        );
        assert_eq!(&k[16..], &[17, 0, 0, 0, 0, 53, 0, 0]);
    }

    /// A raw key for libnftnl's own element encoding, the reference of the test below.
    struct RawKey(Vec<u8>);

    impl SetKey for RawKey {
        const TYPE: u32 = 0;
        const LEN: u32 = 0;

        fn data(&self) -> Box<[u8]> {
            self.0.clone().into_boxed_slice()
        }
    }

    #[test]
    fn element_messages_are_byte_for_byte_libnftnl_s() {
        // Enough elements for several messages, over every key layout.
        for kind in SetKind::ALL {
            let values: Vec<Vec<KeyValue>> = (0..4000u16)
                .map(|i| {
                    kind.key()
                        .iter()
                        .map(|f| match f {
                            KeyField::IifName | KeyField::OifName => {
                                KeyValue::IfName(format!("if{}", i % 3))
                            }
                            KeyField::Daddr(Family::Ipv4) | KeyField::Saddr(Family::Ipv4) => {
                                KeyValue::Addr(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]))
                            }
                            KeyField::Daddr(Family::Ipv6) | KeyField::Saddr(Family::Ipv6) => {
                                KeyValue::Addr(IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 1, i]))
                            }
                            KeyField::L4Proto => KeyValue::Proto(if i % 2 == 0 { 6 } else { 17 }),
                            KeyField::Dport | KeyField::Sport => KeyValue::Port(i),
                            KeyField::Iif | KeyField::Oif | KeyField::Ports => {
                                unreachable!("no SetKind has them")
                            }
                        })
                        .collect()
                })
                .collect();
            let spec = SetSpec::from_values(kind, &values);
            let table_name = CString::new("netnat").unwrap();
            let table = Table::new(&table_name, ProtoFamily::Inet);

            let mut ours = Batch::new();
            for elements in spec.raw().chunks(elements_per_msg(kind)) {
                let msg = ElementsMsg {
                    table: &table_name,
                    name: kind.name(),
                    set: &spec,
                    elements,
                    data: None,
                    id: 42,
                };
                ours.add(&msg, MsgType::Add);
            }
            let ours: Vec<u8> = ours.finalize().iter().flatten().copied().collect();

            let name = CString::new(kind.name()).unwrap();
            let mut set = Set::<RawKey>::new_named(&name, 42, &table, ProtoFamily::Inet);
            for e in spec.raw() {
                let mut key = Vec::new();
                push_element_key(&mut key, &spec, e);
                set.add(&RawKey(key));
            }
            let mut theirs = Batch::new();
            for msg in set.elems_iter() {
                theirs.add(&msg, MsgType::Add);
            }
            let theirs: Vec<u8> = theirs.finalize().iter().flatten().copied().collect();

            let (ours, theirs) = (raw_messages(&ours), raw_messages(&theirs));
            assert!(ours.len() > 3, "{kind:?}: {} messages", ours.len());
            assert_eq!(ours.len(), theirs.len(), "{kind:?}: message count");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(a == b, "{kind:?}: message {i} differs from libnftnl's");
            }
        }
    }
}
