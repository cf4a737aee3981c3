//! What can go wrong while changing netnat's tables: [`NftError`], what the administrator
//! sees, and the raw first refusal of a batch ([`Failure`], with the [`Label`] of the message
//! refused) that the session judges before turning it into an [`NftError`].
//!
//! May use: `policy` (the table names) and nothing of the socket.

use std::fmt;
use std::io;

use super::policy::TABLE_NAME;

/// What failed while changing netnat's table.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A socket operation failed (`op` says which).
    #[error("nftables netlink {op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The process may not change nftables at all (EPERM on the batch itself).
    #[error("not permitted to change nftables rules (netnat needs CAP_NET_ADMIN)")]
    NotPermitted,
    /// EPERM on netnat's table: another socket owns it.
    #[error("netnat's table is owned by another process (another netnat running?)")]
    OwnedByOther,
    /// The table exists without the owner flag (created by `nft -f` or an older netnat); the
    /// kernel refuses to add the flag to it. `flush_leftover` removes it.
    #[error(
        "a table `inet netnat` without netnat's owner flag already exists (left by an older \
         netnat or loaded with nft); delete it first (`nft delete table inet netnat`, or \
         netnat's leftover cleanup)"
    )]
    UnownedTableExists,
    /// The kernel lacks an expression a rule uses (ENOENT even after the compat fallback):
    /// nft_queue and nft_compat/xt_NFQUEUE, nft_fib_inet, or nft_ct.
    #[error(
        "the kernel lacks an nftables expression used by rule `{rule}` (neither the native \
         queue (nft_queue) nor the xtables NFQUEUE target (nft_compat, xt_NFQUEUE) was \
         accepted, or fib (nft_fib_inet), lookup or ct (nft_ct) is missing)"
    )]
    MissingExpression { rule: String },
    /// Any other refusal: which message, the errno and the kernel's extended-ACK text if any.
    #[error("{}", kernel_text(what, *errno, message.as_deref()))]
    Kernel {
        what: String,
        errno: i32,
        message: Option<String>,
    },
    /// The kernel's answers did not add up (lost or missing ACKs).
    #[error("nftables netlink protocol error: {0}")]
    Protocol(String),
    /// An interface name nftables cannot match exactly (empty, longer than 15 bytes, or with a
    /// NUL): refused before anything is sent, since a cut name would match another interface.
    #[error("interface name {0:?} cannot be matched (1 to 15 bytes, no NUL)")]
    BadInterfaceName(String),
}

impl NftError {
    /// The errno behind the error, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Io { source, .. } => source.raw_os_error(),
            NftError::NotPermitted | NftError::OwnedByOther => Some(libc::EPERM),
            NftError::UnownedTableExists => Some(libc::EOPNOTSUPP),
            NftError::MissingExpression { .. } => Some(libc::ENOENT),
            NftError::Kernel { errno, .. } => Some(*errno),
            NftError::Protocol(_) | NftError::BadInterfaceName(_) => None,
        }
    }
}

/// "the kernel refused WHAT: ERRNO TEXT (HINT): KERNEL'S MESSAGE".
fn kernel_text(what: &str, errno: i32, message: Option<&str>) -> String {
    let e = io::Error::from_raw_os_error(errno);
    let hint = match errno {
        libc::EOPNOTSUPP => " (not supported by this kernel)",
        libc::EBUSY => " (in use)",
        libc::EINVAL => " (the kernel rejected an attribute)",
        libc::ENOMEM | libc::ENOBUFS => " (out of kernel memory)",
        _ => "",
    };
    match message {
        Some(m) => format!("the kernel refused {what}: {e}{hint}: {m}"),
        None => format!("the kernel refused {what}: {e}{hint}"),
    }
}

/// What each message of a batch was, to say which one the kernel refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Label {
    BatchBegin,
    BatchEnd,
    /// Adding a table (netnat's or the guard's), by name.
    Table(&'static str),
    Chain(&'static str),
    FlushRules(&'static str),
    Set(&'static str),
    Elements(&'static str),
    DelSet(&'static str),
    Rule {
        chain: &'static str,
        /// Boxed, not a String: keeps `Failure` (returned by value on every path) small.
        text: Box<str>,
        /// Whether the rule holds the queue verdict (only those may fall back to compat).
        queues: bool,
    },
    DelTable(&'static str),
    Io,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::BatchBegin => f.write_str("the batch"),
            Label::BatchEnd => f.write_str("the commit of the batch"),
            Label::Table(t) => write!(f, "adding table inet {t}"),
            Label::Chain(c) => write!(f, "adding chain {c}"),
            Label::FlushRules(t) => write!(f, "flushing the rules of table inet {t}"),
            Label::Set(s) => write!(f, "adding set {s}"),
            Label::Elements(s) => write!(f, "adding elements to set {s}"),
            Label::DelSet(s) => write!(f, "deleting set {s} (to re-create it)"),
            Label::Rule { chain, text, .. } => write!(f, "rule `{text}` in chain {chain}"),
            Label::DelTable(t) => write!(f, "deleting table inet {t}"),
            Label::Io => f.write_str("the netlink exchange"),
        }
    }
}

/// The first refusal of a batch, before it is turned into an [`NftError`] (the fallback to the
/// compat queue needs the raw errno and which message it was).
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) label: Label,
    pub(super) errno: i32,
    pub(super) message: Option<String>,
    pub(super) io: Option<(&'static str, io::Error)>,
    pub(super) protocol: Option<String>,
}

impl Failure {
    pub(super) fn io((op, e): (&'static str, io::Error)) -> Failure {
        Failure {
            label: Label::Io,
            errno: e.raw_os_error().unwrap_or(0),
            message: None,
            io: Some((op, e)),
            protocol: None,
        }
    }

    pub(super) fn into_error(self) -> NftError {
        if let Some((op, source)) = self.io {
            return NftError::Io { op, source };
        }
        if let Some(p) = self.protocol {
            return NftError::Protocol(p);
        }
        match (self.errno, &self.label) {
            // nfnetlink checks CAP_NET_ADMIN before looking at the batch's content.
            (libc::EPERM, Label::BatchBegin) => NftError::NotPermitted,
            (libc::EPERM, _) => NftError::OwnedByOther,
            (libc::EOPNOTSUPP, Label::Table(t)) if *t == TABLE_NAME => NftError::UnownedTableExists,
            (libc::ENOENT, Label::Rule { text, .. }) => NftError::MissingExpression {
                rule: text.to_string(),
            },
            (errno, label) => NftError::Kernel {
                what: label.to_string(),
                errno,
                message: self.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_the_administrator_sees() {
        let e = NftError::Kernel {
            what: Label::Chain("prerouting").to_string(),
            errno: libc::EOPNOTSUPP,
            message: Some("Chain is busy".into()),
        };
        let os = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        assert_eq!(
            e.to_string(),
            format!(
                "the kernel refused adding chain prerouting: {os} (not supported by this \
                 kernel): Chain is busy"
            )
        );
        let e = NftError::Io {
            op: "recv",
            source: io::Error::from_raw_os_error(libc::EBADF),
        };
        assert!(e.to_string().starts_with("nftables netlink recv failed: "));
        assert!(
            std::error::Error::source(&e).is_some(),
            "the io::Error is kept"
        );
        assert_eq!(
            NftError::BadInterfaceName("x".repeat(16)).to_string(),
            format!(
                "interface name {:?} cannot be matched (1 to 15 bytes, no NUL)",
                "x".repeat(16)
            )
        );
    }
}
