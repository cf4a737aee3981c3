//! netnat's own nftables table, built from the services and installed through netlink
//! (`nftnl` + `mnl`), never by running `nft`.
//!
//! API CONTRACT (the daemon and CLI are written against it):
//! - `policy`: pure; which packets are steered to the queue (`Policy::new(services, queue)`),
//!   and `render(&Policy) -> String`, the same table in nft syntax (`netnat rules`).
//! - `NftSession::open()`, `install(&Policy) -> Result<QueueExprKind, NftError>` (one atomic
//!   batch, replaces the table as a whole), `remove()`; the session keeps its one socket so that
//!   the owner flag ties the table's life to the process.
//! - `flush_leftover() -> Result<bool, NftError>`: delete a table left by an earlier netnat.

// TEMPORARY stubs so main builds until the nft branch lands.
use crate::config::Service;
pub struct Policy;
impl Policy {
    pub fn new(services: &[Service], queue: u16) -> Policy {
        let _ = (services, queue);
        todo!()
    }
}
pub fn render(p: &Policy) -> String {
    let _ = p;
    todo!()
}
#[derive(Debug)]
pub enum QueueExprKind {
    Native,
    Compat,
}
pub struct NftSession;
impl NftSession {
    pub fn open() -> Result<NftSession, std::io::Error> {
        todo!()
    }
    pub fn install(&mut self, p: &Policy) -> Result<QueueExprKind, std::io::Error> {
        let _ = p;
        todo!()
    }
    pub fn remove(&mut self) -> Result<(), std::io::Error> {
        todo!()
    }
}
pub fn flush_leftover() -> Result<bool, std::io::Error> {
    todo!()
}
