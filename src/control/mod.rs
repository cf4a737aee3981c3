//! The control socket: how `netnat status`, `service add/del/list` and `reload` talk to the
//! running daemon.
//!
//! A Unix stream socket, by default [`DEFAULT_PATH`]. One connection carries one exchange:
//! the client writes one request line, the daemon answers and closes.
//!
//! Requests (words separated by single spaces, ended by `\n`, at most [`MAX_REQUEST`] bytes):
//!
//! ```text
//! status            status as text          status json      status as JSON
//! status prometheus status as Prometheus metrics (the text exposition format)
//! list              running services, one canonical line each
//! reload            read the configuration file again (as SIGHUP, but answered)
//! add save|nosave <service words>     add a service; `save`: also append it to the file
//! del save|nosave <service words>     delete a service; `save`: also comment it out in the file
//! ```
//!
//! Service words are those of the `service` grammar (with or without the leading `service`);
//! they never contain whitespace, so splitting at spaces is unambiguous.
//!
//! Answers: a first line `ok` or `err <kind>`, then the body (text, lines), then end of stream.
//! Kinds: `denied` (the peer is not uid 0), `usage` (the request is not understood), `config`
//! (the change or the file was refused: duplicate endpoint, syntax, ...), `system` (the
//! kernel or the file system refused), `unsaved` (the change is live in the daemon, but
//! `--save` could not write the file). The client turns them into its exit status.
//!
//! Only uid 0 may use the socket. The daemon judges the peer's credentials (SO_PEERCRED) the
//! moment it accepts a connection: any other peer gets a one-line refusal (`err denied`, if
//! its socket buffer takes it) and is closed at once, before it can send anything, so no other
//! user can hold a connection slot. The default directory `/run/netnat` is netnat's own and
//! kept mode 0700, owner root: other users cannot even reach the socket. The socket file itself
//! is mode 0666, so that where the administrator chose a directory others may enter
//! (`--control`), they reach the daemon's check and get a clear refusal instead of EACCES.
//!
//! The daemon serves the socket from its packet loop, without blocking: every wake-up accepts
//! all pending connections (up to [`ACCEPT_PER_WAKE`], the loop comes back at once for more),
//! so refused peers leave the backlog as fast as they come; at most [`MAX_CONNECTIONS`] root
//! connections are open at once (one more evicts the oldest), and every connection must finish
//! within [`CONNECTION_DEADLINE`] or is closed.

pub mod client;
pub mod metrics;
pub mod metrics_http;
pub mod protocol;
pub mod save;
pub mod server;
pub mod status;
pub mod top;

use std::time::Duration;

pub use client::{ClientError, request};
pub use protocol::{Outcome, Request, Response};
pub use server::{BindError, Server, peer_uid};
pub use status::Format;

/// Where the daemon listens unless `--control` says otherwise.
pub const DEFAULT_PATH: &str = "/run/netnat/control.sock";
/// Longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 8192;
/// Root connections open at once; one more closes the oldest (only root can make them, and a
/// stuck one must not lock out the next).
pub const MAX_CONNECTIONS: usize = 64;
/// New connections taken per wake-up of the packet loop: enough to empty the backlog of a
/// flood in a few wake-ups, few enough that signals are still seen between them.
pub const ACCEPT_PER_WAKE: usize = 1024;
/// Time a client has to send its request and read the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(3);
