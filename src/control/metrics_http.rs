//! `metrics-listen ADDR:PORT`: the daemon serves its metrics ([`crate::control::metrics`]) over HTTP,
//! read-only, at `GET /metrics`.
//!
//! Served from the daemon's main loop beside the control socket, without blocking: the
//! listener and every connection are non-blocking and polled with the rest, so a queue thread
//! never waits for a client; the report is built from the queue threads' counters (summed
//! without a lock), exactly as for `netnat status`, and only once a complete, valid request is in. A slow or hostile client
//! cannot stall the daemon or crowd others out:
//! - at most [`MAX_CONNECTIONS`] connections are open; one more closes the oldest that has not
//!   sent its request yet (or else the oldest);
//! - the request must be in within [`READ_DEADLINE`] and the answer taken within
//!   [`WRITE_DEADLINE`], or the connection is closed;
//! - a request line and headers longer than [`MAX_HEAD`] get `431` and are closed, never
//!   buffered further.
//!
//! Requests within [`REUSE`] of each other share one built body.
//!
//! One request per connection (`Connection: close`): Prometheus scrapes every few seconds at
//! most, a new connection each time costs nothing that matters here.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has from its connect to the end of its request headers.
pub const READ_DEADLINE: Duration = Duration::from_secs(2);
/// Time a client has to take the answer once it is ready.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest request line plus headers accepted, the blank line included.
pub const MAX_HEAD: usize = 8192;
/// How long one built body answers further requests.
pub const REUSE: Duration = Duration::from_millis(100);
/// New connections taken per wake-up: a flood leaves the backlog in a few wake-ups, and the
/// loop still sees its signals and control requests in between.
pub const ACCEPT_PER_WAKE: usize = 256;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    /// The answer once the request is complete; `written` bytes of it are sent.
    output: Option<Vec<u8>>,
    written: usize,
    deadline: Instant,
}

/// The listener and its connections, oldest first.
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    conns: VecDeque<Conn>,
    /// The last body built and when: any local user can reach a loopback port, so requests
    /// in a burst share one report (one summing of the counters per [`REUSE`]).
    cache: Option<(Instant, String)>,
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(MetricsServer {
            listener,
            addr,
            conns: VecDeque::new(),
            cache: None,
        })
    }

    /// The address bound (the port the kernel chose, if 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections are open: their deadlines run even without events.
    pub fn busy(&self) -> bool {
        !self.conns.is_empty()
    }

    /// Appends the listener's and each connection's pollfd.
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>) {
        fds.push(libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for c in &self.conns {
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: if c.output.is_some() {
                    libc::POLLOUT
                } else {
                    libc::POLLIN
                },
                revents: 0,
            });
        }
    }

    /// Accepts what is pending, reads, answers, writes and closes what is due. `metrics`
    /// builds the body of a `GET /metrics`; it is called only for such a request.
    pub fn serve(&mut self, build: &mut dyn FnMut() -> String) {
        let now = Instant::now();
        let cache = &mut self.cache;
        let metrics = &mut || match cache {
            Some((at, body)) if now.duration_since(*at) < REUSE => body.clone(),
            _ => {
                let body = build();
                *cache = Some((now, body.clone()));
                body
            }
        };
        for _ in 0..ACCEPT_PER_WAKE {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut c = Conn {
                        stream,
                        input: Vec::new(),
                        output: None,
                        written: 0,
                        deadline: now + READ_DEADLINE,
                    };
                    // A scraper's request usually came with its connection: answered at once,
                    // it needs no slot, and a flood of new connections cannot evict it before
                    // it is read.
                    if !c.step(now, metrics) {
                        continue;
                    }
                    if self.conns.len() >= MAX_CONNECTIONS {
                        let idle = self.conns.iter().position(|c| c.output.is_none());
                        self.conns.remove(idle.unwrap_or(0));
                    }
                    self.conns.push_back(c);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: the backlog is empty. Anything else (EMFILE, ...): try again on
                // the next wake-up rather than spin here.
                Err(_) => break,
            }
        }
        self.conns.retain_mut(|c| c.step(now, metrics));
    }
}

impl Conn {
    /// Moves the exchange on as far as it goes without blocking; false: close it.
    fn step(&mut self, now: Instant, metrics: &mut dyn FnMut() -> String) -> bool {
        if now >= self.deadline {
            return false;
        }
        if self.output.is_none() {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => return false, // closed before a complete request
                    Ok(n) => {
                        self.input.extend_from_slice(&buf[..n]);
                        if let Some(answer) = answer(&self.input, metrics) {
                            self.output = Some(answer);
                            self.deadline = now + WRITE_DEADLINE;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        }
        let Some(out) = &self.output else {
            return true;
        };
        while self.written < out.len() {
            match self.stream.write(&out[self.written..]) {
                Ok(0) => return false,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        false
    }
}

/// The answer to the request head read so far, or `None` while it is incomplete (and within
/// [`MAX_HEAD`]).
fn answer(input: &[u8], metrics: &mut dyn FnMut() -> String) -> Option<Vec<u8>> {
    let end = find(input, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| find(input, b"\n\n").map(|i| i + 2));
    let head = match end {
        Some(end) if end <= MAX_HEAD => &input[..end],
        _ if input.len() >= MAX_HEAD => {
            return Some(response(
                "431 Request Header Fields Too Large",
                "text/plain",
                "request line and headers are limited to 8192 bytes\n",
            ));
        }
        _ => return None,
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Some(response(
            "400 Bad Request",
            "text/plain",
            "expected: GET /metrics HTTP/1.1\n",
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Some(response(
            "400 Bad Request",
            "text/plain",
            "expected HTTP/1.x\n",
        ));
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Some(response(
            "404 Not Found",
            "text/plain",
            "netnat serves /metrics only\n",
        ));
    }
    if method != "GET" {
        let mut r = response(
            "405 Method Not Allowed",
            "text/plain",
            "/metrics is read-only: GET\n",
        );
        // "Allow" is required with a 405; inserted after the status line.
        let at = find(&r, b"\r\n").map_or(0, |i| i + 2);
        r.splice(at..at, b"Allow: GET\r\n".iter().copied());
        return Some(r);
    }
    Some(response(
        "200 OK",
        crate::control::metrics::CONTENT_TYPE,
        &metrics(),
    ))
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(req: &[u8]) -> Option<String> {
        answer(req, &mut || "netnat_up 1\n".to_string()).map(|a| String::from_utf8(a).unwrap())
    }

    #[test]
    fn get_metrics_and_the_refusals() {
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nnetnat_up 1\n"), "{ok}");
        assert!(ok.contains("Content-Length: 12\r\n"), "{ok}");
        assert!(
            ask(b"GET /metrics?x=1 HTTP/1.0\n\n")
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            ask(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap()
                .starts_with("HTTP/1.1 404")
        );
        let post = ask(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"),
            "{post}"
        );
        assert!(
            ask(b"GET /metrics\r\n\r\n")
                .unwrap()
                .starts_with("HTTP/1.1 400")
        );
        assert!(
            ask(b"GET /metrics SPDY/3\r\n\r\n")
                .unwrap()
                .starts_with("HTTP/1.1 400")
        );
    }

    #[test]
    fn incomplete_heads_wait_and_long_ones_are_refused() {
        assert_eq!(ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        let long = vec![b'a'; MAX_HEAD];
        assert!(ask(&long).unwrap().starts_with("HTTP/1.1 431"));
        let mut just = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        just.resize(MAX_HEAD - 4, b'x');
        just.extend_from_slice(b"\r\n\r\n");
        assert!(ask(&just).unwrap().starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn requests_in_a_burst_share_one_report() {
        let mut s = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = s.addr();
        let mut clients: Vec<TcpStream> = (0..5)
            .map(|_| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
                c
            })
            .collect();
        let mut calls = 0;
        std::thread::sleep(Duration::from_millis(20));
        s.serve(&mut || {
            calls += 1;
            format!("netnat_up {calls}\n")
        });
        for c in &mut clients {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            assert!(got.ends_with("\r\n\r\nnetnat_up 1\n"), "{got:?}");
        }
        assert_eq!(calls, 1);
        // After REUSE, a new request gets a new report.
        std::thread::sleep(REUSE);
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.serve(&mut || {
            calls += 1;
            format!("netnat_up {calls}\n")
        });
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.ends_with("netnat_up 2\n"), "{got:?}");
    }

    #[test]
    fn a_server_answers_and_bounds_its_connections() {
        let mut s = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = s.addr();
        let mut calls = 0;
        // More idle connections than the limit: the oldest idle ones go.
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 8)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = String::new();
        c.set_nonblocking(true).unwrap();
        while Instant::now() < deadline {
            s.serve(&mut || {
                calls += 1;
                "netnat_up 1\n".into()
            });
            assert!(s.conns.len() <= MAX_CONNECTIONS);
            let mut buf = [0u8; 1024];
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert!(
            got.starts_with("HTTP/1.1 200 OK") && got.ends_with("netnat_up 1\n"),
            "{got:?}"
        );
        assert_eq!(calls, 1);
        drop(idle);
    }
}
