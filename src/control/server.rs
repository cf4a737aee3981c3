//! The daemon's side of the control socket: accept, judge the peer, serve without blocking.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{
    ACCEPT_PER_WAKE, CONNECTION_DEADLINE, DEFAULT_PATH, MAX_CONNECTIONS, MAX_REQUEST, Outcome,
    Request, Response,
};

/// The listen backlog: a flood of refused peers waits here, not in front of root's connect.
const BACKLOG: libc::c_int = 1024;

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
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another netnat answers on this path.
    #[error("control socket {}: another netnat is listening there", .0.display())]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is left alone.
    #[error("control socket {}: the path exists and is not a socket", .0.display())]
    NotSocket(PathBuf),
    /// A step of setting the socket up failed; `what` is the step, done to `path`.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Server {
    /// Binds the socket at `path`: creates the parent directory (mode 0700) if it is missing,
    /// keeps the default directory root-only, removes a stale socket file that nobody answers
    /// on, refuses one a live daemon holds.
    pub fn bind(path: &Path) -> Result<Server, BindError> {
        let ctx = |what: &'static str, source: io::Error| BindError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
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
                return Err(BindError::NotSocket(path.to_owned()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::*;

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

    /// The errors name what failed as they always did, and keep the system's error behind
    /// them as their source.
    #[test]
    fn bind_and_client_errors_keep_their_source() {
        use std::error::Error;
        let path = scratch("errors");
        let dir = path.parent().unwrap().parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        // `sub` is a regular file: no socket can be bound below it.
        std::fs::write(dir.join("sub"), "").unwrap();
        let e = Server::bind(&path).err().unwrap();
        assert!(matches!(e, BindError::Io { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("binding {}: ", path.display())),
            "{e}"
        );
        let io = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(
            io.map(io::Error::raw_os_error),
            Some(Some(libc::ENOTDIR)),
            "{e:?}"
        );
        // Something that is not a socket is left alone.
        let file = dir.join("plain");
        std::fs::write(&file, "").unwrap();
        let e = Server::bind(&file).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "control socket {}: the path exists and is not a socket",
                file.display()
            )
        );
        assert!(file.exists());
        // No daemon: exit 3, the message as before, ENOENT as its source.
        let gone = dir.join("gone.sock");
        let e = request(&gone, &Request::List, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "netnat is not running (no control socket at {})",
                gone.display()
            )
        );
        let io = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::NotFound));
        std::fs::remove_dir_all(&dir).unwrap();
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
