//! Raw libnftnl objects where the `nftnl` crate falls short: a table with flags (the owner
//! flag), a flush of every rule of a table, and sets whose key is a concatenation.
//!
//! May use: `nftnl` and its `nftnl_sys` bindings, `policy` for the set kinds.

use std::ffi::{CStr, CString, c_void};
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;
use nftnl::set::{Set, SetKey};
use nftnl::{MsgType, NlMsg, ProtoFamily, Table};

use super::sets::{KeyField, SetKind, concat_type, key_len};

/// A table message built with raw libnftnl calls, because `nftnl::Table` always sends flags 0
/// and offers no way to set the owner flag.
pub(super) struct TableMsg {
    table: NonNull<sys::nftnl_table>,
}

impl TableMsg {
    pub(super) fn new(name: &str, flags: Option<u32>) -> TableMsg {
        let name = CString::new(name).expect("table name without NUL");
        // SAFETY: the allocation is checked for NULL; the setters copy the integer and the
        // NUL-terminated name into the table object.
        unsafe {
            let t = NonNull::new(sys::nftnl_table_alloc()).unwrap_or_else(|| std::process::abort());
            sys::nftnl_table_set_u32(
                t.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                ProtoFamily::Inet as u32,
            );
            sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            if let Some(f) = flags {
                sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, f);
            }
            TableMsg { table: t }
        }
    }
}

impl Drop for TableMsg {
    fn drop(&mut self) {
        // SAFETY: the table object is owned by this value and freed exactly once.
        unsafe { sys::nftnl_table_free(self.table.as_ptr()) };
    }
}

// SAFETY: the message is one table header plus name and flags attributes, far below the
// maximum message size the batch reserves for each message.
unsafe impl NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWTABLE, libc::NLM_F_ACK | libc::NLM_F_CREATE),
            MsgType::Del => (libc::NFT_MSG_DELTABLE, libc::NLM_F_ACK),
        };
        // SAFETY: the caller (nftnl's Batch) gives a buffer with room for a maximal message;
        // the table object is alive.
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty as u16,
                ProtoFamily::Inet as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(hdr, self.table.as_ptr());
        }
    }
}

/// DELRULE naming only the table: the kernel then deletes every rule of every chain in it.
pub(super) struct FlushRules {
    rule: NonNull<sys::nftnl_rule>,
}

impl FlushRules {
    pub(super) fn new(table: &CStr) -> FlushRules {
        // SAFETY: the allocation is checked; the setters copy the family and the name.
        unsafe {
            let r = NonNull::new(sys::nftnl_rule_alloc()).unwrap_or_else(|| std::process::abort());
            sys::nftnl_rule_set_u32(
                r.as_ptr(),
                sys::NFTNL_RULE_FAMILY as u16,
                ProtoFamily::Inet as u32,
            );
            sys::nftnl_rule_set_str(r.as_ptr(), sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
            FlushRules { rule: r }
        }
    }
}

impl Drop for FlushRules {
    fn drop(&mut self) {
        // SAFETY: owned by this value, freed once.
        unsafe { sys::nftnl_rule_free(self.rule.as_ptr()) };
    }
}

// SAFETY: a header plus the table name: far below the per-message maximum.
unsafe impl NlMsg for FlushRules {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        // SAFETY: as for TableMsg: room for a maximal message, live rule object.
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_DELRULE as u16,
                ProtoFamily::Inet as u16,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_rule_nlmsg_build_payload(hdr, self.rule.as_ptr());
        }
    }
}

/// A named set of netnat's table, with the concatenated key type of `kind` and no elements:
/// the elements go in [`ElementsMsg`]s. nftnl's `Set` is typed by a key type with a fixed
/// datatype and length, which concatenations do not have; the set's real key type and length
/// are set on the libnftnl object afterwards. `id` must be unique within the batch (the kernel
/// uses it to find a set created in the same batch when the name does not).
pub(super) fn new_set<'a>(kind: SetKind, id: u32, table: &'a Table) -> Set<'a, NoKey> {
    named_set(kind.name(), kind.key(), id, table)
}

/// A map named `name` from keys laid out as `key` to concatenated data laid out as `data`
/// (each component in a 32-bit register of its own, as in keys), no elements yet.
pub(super) fn new_map<'a>(
    name: &str,
    key: &[KeyField],
    data: &[KeyField],
    id: u32,
    table: &'a Table,
) -> Set<'a, NoKey> {
    let set = named_set(name, key, id, table);
    // SAFETY: as in `named_set`: a live set object, u32 attributes copied.
    unsafe {
        let p = set.as_ptr().as_ptr();
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, libc::NFT_SET_MAP as u32);
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_TYPE as u16, concat_type(data));
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, key_len(data) as u32);
    }
    set
}

/// A dynamic set (`flags dynamic,timeout`) that rules fill from the packet path: elements
/// expire `timeout_ms` after they were added (or last updated), at most `size` of them; with
/// `counter`, every element counts the packets and bytes of the lookups and updates that find
/// it.
pub(super) fn dynamic_set<'a>(
    name: &str,
    key: &[KeyField],
    (id, table): (u32, &'a Table),
    timeout_ms: u64,
    size: u32,
    counter: bool,
) -> Set<'a, NoKey> {
    let set = named_set(name, key, id, table);
    // SAFETY: as in `named_set`: a live set object; integers are copied, and the counter
    // expression object is handed to the set, which frees it with itself.
    unsafe {
        let p = set.as_ptr().as_ptr();
        let flags = libc::NFT_SET_TIMEOUT | libc::NFT_SET_EVAL;
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, flags as u32);
        sys::nftnl_set_set_u64(p, sys::NFTNL_SET_TIMEOUT as u16, timeout_ms);
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DESC_SIZE as u16, size);
        if counter {
            sys::nftnl_set_add_expr(p, super::expr::counter_expr().as_ptr());
        }
    }
    set
}

fn named_set<'a>(name: &str, key: &[KeyField], id: u32, table: &'a Table) -> Set<'a, NoKey> {
    let name = CString::new(name).expect("set name without NUL");
    let set = Set::<NoKey>::new_named(&name, id, table, ProtoFamily::Inet);
    // SAFETY: `set` owns a live libnftnl set object; both attributes are u32 and copied.
    unsafe {
        let p = set.as_ptr().as_ptr();
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, concat_type(key));
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, key_len(key) as u32);
    }
    set
}

/// The key type parameter of the libnftnl sets: never used for elements (see [`new_set`]).
pub(super) struct NoKey;

impl SetKey for NoKey {
    // Placeholders, overwritten in `new_set`.
    const TYPE: u32 = 0;
    const LEN: u32 = 0;

    fn data(&self) -> Box<[u8]> {
        Box::new([])
    }
}
