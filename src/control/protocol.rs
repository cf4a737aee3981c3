//! The request and answer lines of the control socket (see the module above for the grammar).

use super::status::Format;

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
