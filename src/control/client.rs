//! The client's side of the control socket: one request, one answer.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

/// Why a client request failed before the daemon could answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens at the path (exit status 3).
    #[error("netnat is not running (no control socket at {})", .path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket may not be opened by this user (exit status 4).
    #[error(
        "permission denied: cannot open the control socket {} (only root may control netnat)",
        .path.display()
    )]
    Denied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Talking over the socket failed (exit status 1).
    #[error("control socket {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon's answer could not be read (exit status 1).
    #[error("{0}")]
    Answer(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. } => 3,
            ClientError::Denied { .. } => 4,
            ClientError::Io { .. } | ClientError::Answer(_) => 1,
        }
    }
}

/// Sends one request to the daemon at `path` and reads its answer.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let at = |source: io::Error| {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR) => {
                ClientError::NotRunning { path, source }
            }
            Some(libc::EACCES | libc::EPERM) => ClientError::Denied { path, source },
            _ => ClientError::Io { path, source },
        }
    };
    let mut stream = UnixStream::connect(path).map_err(at)?;
    let io = |source: io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = req.encode();
    line.push('\n');
    // A daemon that refuses the caller writes its answer at accept and closes: the request
    // then meets EPIPE (or ECONNRESET), and the answer is still there to read.
    let sent = stream.write_all(line.as_bytes());
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The daemon closed with our request unread (it refused us at accept): what it
            // wrote before is complete.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => return Err(io(e)),
        }
    }
    if raw.is_empty()
        && let Err(e) = sent
    {
        return Err(io(e));
    }
    Response::parse(&String::from_utf8_lossy(&raw)).map_err(ClientError::Answer)
}
