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

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::status::Format;

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
/// The listen backlog: a flood of refused peers waits here, not in front of root's connect.
const BACKLOG: libc::c_int = 1024;
/// Time a client has to send its request and read the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(3);

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status { format: Format },
    List,
    Reload,
    Add { save: bool, words: Vec<String> },
    Del { save: bool, words: Vec<String> },
}

impl Request {
    /// Parses one request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let owned = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let save = |w: Option<&&str>| match w {
            Some(&"save") => Ok(true),
            Some(&"nosave") => Ok(false),
            other => Err(format!("expected save or nosave, found {other:?}")),
        };
        match words.as_slice() {
            ["status"] => Ok(Request::Status {
                format: Format::Text,
            }),
            // `status text` is accepted; the client sends plain `status` for it.
            ["status", f] => match Format::of(f) {
                Some(format) => Ok(Request::Status { format }),
                None => Err(format!("unknown status format {f:?}")),
            },
            ["list"] => Ok(Request::List),
            ["reload"] => Ok(Request::Reload),
            ["add", rest @ ..] => Ok(Request::Add {
                save: save(rest.first())?,
                words: owned(rest.get(1..).unwrap_or(&[])),
            }),
            ["del", rest @ ..] => Ok(Request::Del {
                save: save(rest.first())?,
                words: owned(rest.get(1..).unwrap_or(&[])),
            }),
            [] => Err("empty request".into()),
            [first, ..] => Err(format!("unknown request {first:?}")),
        }
    }

    /// The request line, without its newline.
    pub fn encode(&self) -> String {
        let save = |s: bool| if s { "save" } else { "nosave" };
        match self {
            Request::Status {
                format: Format::Text,
            } => "status".into(),
            Request::Status { format } => format!("status {}", format.name()),
            Request::List => "list".into(),
            Request::Reload => "reload".into(),
            Request::Add { save: s, words } => format!("add {} {}", save(*s), words.join(" ")),
            Request::Del { save: s, words } => format!("del {} {}", save(*s), words.join(" ")),
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Denied,
    Usage,
    Config,
    System,
    /// The change is applied in the running daemon, the file was not saved.
    Unsaved,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Usage => "usage",
            Outcome::Config => "config",
            Outcome::System => "system",
            Outcome::Unsaved => "unsaved",
        }
    }

    /// The client's exit status: 0 ok, 1 system refused, 2 usage/config error, 4 denied,
    /// 5 applied live but not saved (3, not running, comes from [`ClientError`]).
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::System => 1,
            Outcome::Usage | Outcome::Config => 2,
            Outcome::Denied => 4,
            Outcome::Unsaved => 5,
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub outcome: Outcome,
    pub body: String,
}

impl Response {
    pub fn ok(body: impl Into<String>) -> Response {
        Response {
            outcome: Outcome::Ok,
            body: body.into(),
        }
    }

    pub fn err(outcome: Outcome, body: impl Into<String>) -> Response {
        Response {
            outcome,
            body: body.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = match self.outcome {
            Outcome::Ok => "ok\n".to_string(),
            o => format!("err {}\n", o.word()),
        };
        out.push_str(&self.body);
        if !self.body.is_empty() && !self.body.ends_with('\n') {
            out.push('\n');
        }
        out.into_bytes()
    }

    pub fn parse(text: &str) -> Result<Response, String> {
        let (first, body) = text.split_once('\n').unwrap_or((text, ""));
        let outcome = match first {
            "ok" => Outcome::Ok,
            "err denied" => Outcome::Denied,
            "err usage" => Outcome::Usage,
            "err config" => Outcome::Config,
            "err system" => Outcome::System,
            "err unsaved" => Outcome::Unsaved,
            other => return Err(format!("unexpected answer from netnat: {other:?}")),
        };
        Ok(Response {
            outcome,
            body: body.to_string(),
        })
    }
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the kernel writes at
    // most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// One client connection in the daemon; only root's are kept.
struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    /// The answer, once the request is complete; `written` bytes of it are sent.
    output: Option<Vec<u8>>,
    written: usize,
    deadline: Instant,
}

/// The daemon's side: the listening socket and the connections being served.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created, so that we remove only our own.
    identity: (u64, u64),
    /// Oldest first.
    conns: Vec<Conn>,
    /// Peers refused at accept since the start (not root, or credentials unreadable).
    refused: u64,
}

/// Why the control socket could not be set up.
#[derive(Debug)]
pub enum BindError {
    /// Another netnat answers on this path.
    InUse(PathBuf),
    Io(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::InUse(p) => write!(
                f,
                "control socket {}: another netnat is listening there",
                p.display()
            ),
            BindError::Io(m) => f.write_str(m),
        }
    }
}

impl Server {
    /// Binds the socket at `path`: creates the parent directory (mode 0700) if it is missing,
    /// keeps the default directory root-only, removes a stale socket file that nobody answers
    /// on, refuses one a live daemon holds.
    pub fn bind(path: &Path) -> Result<Server, BindError> {
        let ctx =
            |what: &str, e: io::Error| BindError::Io(format!("{what} {}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| ctx("creating the directory of", e))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| ctx("setting the mode of the directory of", e))?;
            } else if path == Path::new(DEFAULT_PATH) {
                private_dir(dir).map_err(|e| ctx("the directory of", e))?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(BindError::Io(format!(
                    "control socket {}: the path exists and is not a socket",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            // Left behind by a netnat that died: nobody listens.
            std::fs::remove_file(path).map_err(|e| ctx("removing the stale socket", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| ctx("binding", e))?;
        // A second listen() only raises the backlog std chose (128).
        // SAFETY: plain syscall on the listening socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            return Err(ctx("listen on", io::Error::last_os_error()));
        }
        // Everyone may connect, so that the uid check answers with a clear refusal.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| ctx("setting the mode of", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ctx("O_NONBLOCK on", e))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| ctx("reading", e))?;
        Ok(Server {
            listener,
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
            conns: Vec::new(),
            refused: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections are open (their deadlines must be watched even without events).
    pub fn busy(&self) -> bool {
        !self.conns.is_empty()
    }

    /// Peers refused at accept so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The descriptors the packet loop polls, with the events wanted. The listener is always
    /// among them: a refused peer must leave the backlog at once, whatever root has open.
    pub fn poll_fds(&self, out: &mut Vec<libc::pollfd>) {
        out.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
        for c in &self.conns {
            let events = if c.output.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            out.push(pollfd(c.stream.as_raw_fd(), events));
        }
    }

    /// Accepts, reads, answers and writes without ever blocking. `handle` is called for each
    /// complete request of a uid-0 peer.
    pub fn serve(&mut self, handle: &mut dyn FnMut(Request) -> Response) {
        for _ in 0..ACCEPT_PER_WAKE {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: the backlog is empty
            }
        }
        let now = Instant::now();
        self.conns
            .retain_mut(|c| now < c.deadline && step(c, &mut *handle));
    }
}

impl Server {
    /// Judges a new peer by its credentials: root's connection is kept, anyone else's is
    /// refused and closed before it can occupy anything.
    fn admit(&mut self, stream: UnixStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        match peer_uid(stream.as_raw_fd()) {
            Ok(0) => {}
            other => {
                self.refused += 1;
                let body = match other {
                    Ok(uid) => {
                        format!(
                            "permission denied: only root may control netnat (you are uid {uid})"
                        )
                    }
                    Err(_) => "permission denied: the peer's credentials could not be read".into(),
                };
                // One write into an empty socket buffer: it fits, or the peer gets no reason.
                let _ = (&stream).write(&Response::err(Outcome::Denied, body).encode());
                return;
            }
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.conns.remove(0);
        }
        self.conns.push(Conn {
            stream,
            input: Vec::new(),
            output: None,
            written: 0,
            deadline: Instant::now() + CONNECTION_DEADLINE,
        });
    }
}

/// Makes the default socket directory root-only: it must be a real directory owned by root;
/// its mode is set to 0700 whatever it was (an administrator's `chmod` or an older netnat).
fn private_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other("exists and is not a directory"));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "is owned by uid {}, not by netnat (uid {me}): refusing to listen there",
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Advances one connection; false when it is finished (or broken) and can be closed.
fn step(c: &mut Conn, handle: &mut dyn FnMut(Request) -> Response) -> bool {
    if c.output.is_none() {
        let mut buf = [0u8; 1024];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    if c.input.is_empty() {
                        return false;
                    }
                    break; // a last line without newline still counts
                }
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    if c.input.contains(&b'\n') || c.input.len() > MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        let response = answer(c, handle);
        c.output = Some(response.encode());
    }
    let Some(out) = &c.output else { return true };
    while c.written < out.len() {
        match c.stream.write(&out[c.written..]) {
            Ok(0) => return false,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    false
}

/// The answer to a complete request; the peer is root (judged at accept).
fn answer(c: &Conn, handle: &mut dyn FnMut(Request) -> Response) -> Response {
    if c.input.len() > MAX_REQUEST {
        return Response::err(
            Outcome::Usage,
            format!("request longer than {MAX_REQUEST} bytes"),
        );
    }
    let line = c.input.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Response::err(Outcome::Usage, "the request is not UTF-8");
    };
    match Request::parse(line) {
        Ok(req) => handle(req),
        Err(e) => Response::err(Outcome::Usage, e),
    }
}

impl Drop for Server {
    /// Removes the socket file, unless another process has put its own there meanwhile.
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Why a client request failed before the daemon could answer.
#[derive(Debug)]
pub enum ClientError {
    /// No daemon listens at the path (exit status 3).
    NotRunning(String),
    /// The socket may not be opened by this user (exit status 4).
    Denied(String),
    /// Anything else (exit status 1).
    Io(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning(_) => 3,
            ClientError::Denied(_) => 4,
            ClientError::Io(_) => 1,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning(m) | ClientError::Denied(m) | ClientError::Io(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Sends one request to the daemon at `path` and reads its answer.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let p = path.display();
    let mut stream = UnixStream::connect(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR) => {
            ClientError::NotRunning(format!("netnat is not running (no control socket at {p})"))
        }
        Some(libc::EACCES | libc::EPERM) => ClientError::Denied(format!(
            "permission denied: cannot open the control socket {p} (only root may control netnat)"
        )),
        _ => ClientError::Io(format!("control socket {p}: {e}")),
    })?;
    let io = |e: io::Error| ClientError::Io(format!("control socket {p}: {e}"));
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
    Response::parse(&String::from_utf8_lossy(&raw)).map_err(ClientError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        for r in [
            Request::Status {
                format: Format::Text,
            },
            Request::Status {
                format: Format::Json,
            },
            Request::Status {
                format: Format::Prometheus,
            },
            Request::List,
            Request::Reload,
            Request::Add {
                save: true,
                words: words("pub0 port * 81 TCP 192.168.77.10 8081 0x8000"),
            },
            Request::Del {
                save: false,
                words: words("service save port * 81 TCP 192.168.77.10 8081"),
            },
        ] {
            assert_eq!(Request::parse(&r.encode()), Ok(r.clone()), "{}", r.encode());
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert_eq!(Request::parse(""), Err("empty request".into()));
        assert_eq!(
            Request::parse("shutdown"),
            Err("unknown request \"shutdown\"".into())
        );
        assert!(
            Request::parse("add pub0 port")
                .unwrap_err()
                .contains("save or nosave")
        );
        assert!(Request::parse("status yaml").is_err());
        assert_eq!(
            Request::parse("add save"),
            Ok(Request::Add {
                save: true,
                words: vec![]
            })
        );
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::ok("a\nb\n"),
            Response::ok(""),
            Response::err(Outcome::Denied, "permission denied: x\n"),
            Response::err(Outcome::Config, "line 3: dup\n"),
            Response::err(Outcome::System, "netlink\n"),
            Response::err(Outcome::Usage, "what\n"),
            Response::err(Outcome::Unsaved, "added: x\nnot saved\n"),
        ] {
            let text = String::from_utf8(r.encode()).unwrap();
            assert_eq!(Response::parse(&text), Ok(r));
        }
        assert!(Response::parse("hello\n").is_err());
        assert_eq!(Response::parse("ok").unwrap().body, "");
        let no_newline = Response::ok("x");
        assert_eq!(no_newline.encode(), b"ok\nx\n");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Outcome::Ok.exit_code(), 0);
        assert_eq!(Outcome::System.exit_code(), 1);
        assert_eq!(Outcome::Config.exit_code(), 2);
        assert_eq!(Outcome::Usage.exit_code(), 2);
        assert_eq!(Outcome::Denied.exit_code(), 4);
        assert_eq!(Outcome::Unsaved.exit_code(), 5);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netnat-ctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("sub").join("control.sock")
    }

    #[test]
    #[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
    fn server_answers_one_request_and_cleans_up() {
        let path = scratch("serve");
        let mut server = Server::bind(&path).unwrap();
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let p = path.clone();
        let client = std::thread::spawn(move || {
            request(
                &p,
                &Request::Status {
                    format: Format::Json,
                },
                Duration::from_secs(5),
            )
        });
        let mut seen = Vec::new();
        let end = Instant::now() + Duration::from_secs(5);
        while !client.is_finished() && Instant::now() < end {
            server.serve(&mut |r| {
                seen.push(r);
                Response::ok("{}\n")
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        let resp = client.join().unwrap().unwrap();
        assert_eq!(resp, Response::ok("{}\n"));
        assert_eq!(
            seen,
            vec![Request::Status {
                format: Format::Json,
            }]
        );

        // A second server on the same path is refused while the first lives.
        assert!(matches!(Server::bind(&path), Err(BindError::InUse(_))));
        drop(server);
        assert!(!path.exists(), "socket file removed on drop");
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn stale_socket_is_replaced_and_no_daemon_means_exit_3() {
        let path = scratch("stale");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listens
        let err = request(&path, &Request::List, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        let server = Server::bind(&path).expect("stale file replaced");
        drop(server);
        let err = request(&path, &Request::List, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("not running"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn slow_client_is_dropped_at_its_deadline_without_blocking() {
        let path = scratch("slow");
        let mut server = Server::bind(&path).unwrap();
        let _silent = UnixStream::connect(&path).unwrap(); // connects, never writes
        let t = Instant::now();
        server.serve(&mut |_| Response::ok(""));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "serve must not block"
        );
        assert_eq!(server.conns.len(), 1);
        server.conns[0].deadline = Instant::now();
        server.serve(&mut |_| Response::ok(""));
        assert!(server.conns.is_empty());
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    /// Serves until `done` or 5 s pass.
    fn serve_until(server: &mut Server, done: &dyn Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !done() && Instant::now() < end {
            server.serve(&mut |_| Response::ok("served\n"));
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_non_root_peer_is_refused_and_closed_at_accept() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("a_non_root_peer_is_refused_and_closed_at_accept: needs root, not run");
            return;
        }
        let path = scratch("nonroot");
        let mut server = Server::bind(&path).unwrap();
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(
            path.parent().unwrap().parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let p = path.clone();
        // The raw system call changes the credentials of this one thread only (glibc's
        // setuid would change the whole test process); its connect carries uid 65534.
        let idle = std::thread::spawn(move || {
            // SAFETY: plain syscall; it affects only the calling thread, which exits after.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            let idle = UnixStream::connect(&p).unwrap();
            let answer = request(
                &p,
                &Request::Status {
                    format: Format::Text,
                },
                Duration::from_secs(5),
            );
            (idle, answer)
        });
        serve_until(&mut server, &|| idle.is_finished());
        let (mut idle, answer) = idle.join().unwrap();
        assert_eq!(server.conns.len(), 0, "no slot is held for a non-root peer");
        assert_eq!(server.refused(), 2);
        let answer = answer.expect("the refusal is read even though the daemon closed first");
        assert_eq!(answer.outcome, Outcome::Denied);
        assert!(
            answer
                .body
                .contains("only root may control netnat (you are uid 65534)"),
            "{answer:?}"
        );
        // The idle peer, which never wrote, was told the same and is at end of stream.
        let mut text = String::new();
        idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        idle.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("err denied\n"), "{text:?}");
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn idle_root_connections_beyond_the_limit_evict_the_oldest() {
        let path = scratch("evict");
        let mut server = Server::bind(&path).unwrap();
        let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS + 10)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        server.serve(&mut |_| Response::ok(""));
        assert_eq!(server.conns.len(), MAX_CONNECTIONS, "bounded");
        let p = path.clone();
        let client =
            std::thread::spawn(move || request(&p, &Request::List, Duration::from_secs(5)));
        serve_until(&mut server, &|| client.is_finished());
        let t = Instant::now();
        assert_eq!(client.join().unwrap().unwrap(), Response::ok("served\n"));
        assert!(t.elapsed() < Duration::from_secs(1));
        // The first ones were closed to make room.
        let mut first = &idle[0];
        first
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(first.read(&mut [0u8; 8]).unwrap(), 0);
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn peer_uid_of_own_socket_pair_is_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert_eq!(peer_uid(a.as_raw_fd()).unwrap(), me);
    }
}
