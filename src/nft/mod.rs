//! netnat's own nftables table, built from the services and installed through netlink
//! (`nftnl` for the objects, [`crate::netlink`] for the socket and framing), never by running
//! `nft`.
//!
//! - [`policy`]: pure; which packets are steered to the queue ([`Policy::new`]), as plain data:
//!   the services as elements of sets with concatenated keys, a constant handful of lookup
//!   rules, and an unhooked rule whose `ct` expression keeps conntrack (and so reassembly) on.
//!   Its parts, pure as well: [`sets`] (the set kinds, their key fields, the elements),
//!   [`rules`] (matches, verdicts, rules, chains, the queue), [`family`] (address family and
//!   ICMP flavour), `icmp` (the rules for ICMP errors) and [`guard`] (the leak guard's chains).
//! - [`render`]: the same table in nft syntax (`netnat rules`), as `nft list` prints it.
//! - `translate`: a policy rule into nftables expressions; `elements`: set elements encoded by
//!   hand; `objects`: raw libnftnl objects the crate lacks; `batch`: the install and delete
//!   batches built from them.
//! - [`NftSession`] (`session`): one netlink socket for the session's life;
//!   [`NftSession::install`] sends one atomic batch that replaces the table's content,
//!   [`NftSession::remove`] deletes it. The table carries the owner flag, so it lives exactly
//!   as long as the socket. [`NftError`] (`error`) is what the administrator is told.
//! - [`flush_leftover`]: delete everything netnat installed: a table left by an earlier
//!   netnat and the leak guard.
//! - [`rewrite`]: the header-only path's maps and chains (`header-only on`): the kernel writes
//!   the rewrite netnat decided for packets it saw the headers of only.
//! - [`offload`]: flow offload (`offload on`): dynamic sets of flows whose packets the kernel
//!   rewrites without queueing them after netnat decided their first one, and counter sets
//!   that keep those packets counted; [`dump`] reads the counters back.
//! - [`Guard`]: table `inet netnat_guard`, without the owner flag, installed and replaced in the
//!   same batch as netnat's table but left in place when netnat stops: it drops replies of
//!   translated connections that netnat did not translate, so that no private address leaks
//!   when a service is removed or netnat is gone.
//!
//! Only tables `inet netnat` and `inet netnat_guard` are ever created, changed or deleted.

mod batch;
pub mod dump;
mod elements;
mod error;
pub mod expr;
pub mod family;
pub mod guard;
mod icmp;
mod objects;
pub mod offload;
pub mod policy;
mod render;
pub mod rewrite;
pub mod rules;
mod session;
pub mod sets;
mod translate;
#[cfg(test)]
mod walk;

#[doc(hidden)]
pub use batch::install_batch_bytes;
pub use batch::{NFT_TABLE_F_OWNER, QueueExprKind};
pub use error::NftError;
pub use family::Family;
pub use guard::{GUARD_LABEL, GUARD_TABLE, Guard};
pub use policy::{Policy, TABLE_NAME};
pub use render::{render, render_guard, render_rule, render_table};
pub use rules::{ChainSpec, CtDirection, Hook, Match, QueueSpec, Rule, Verdict};
pub use session::{NftSession, flush_leftover};
pub use sets::{KeyField, KeyValue, SetKind, SetSpec};
