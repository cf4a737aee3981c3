//! The seed's `service` command, one line of it:
//!
//! ```text
//! service <int> port <app IP|*> <app port> <TCP|UDP> <act IP> <act port> [flags]
//! ```
//!
//! One implementation serves both the configuration file (a line, columns in characters) and
//! the command line (words already split by the shell, "columns" are word numbers), so that a
//! service means the same thing wherever it is written.
//!
//! Decisions this grammar makes, beyond the seed's text:
//! - The keywords `service` and `port` and the protocol are case-insensitive.
//! - Ports are plain decimal 1-65535: no sign, no leading zeros (`080` would read as octal to
//!   some eyes, and `std` refuses leading zeros in IPv4 octets for the same reason).
//! - Addresses are whatever `std::net` parses; IPv6 without brackets or zone. Unspecified,
//!   multicast, broadcast and IPv4-mapped IPv6 addresses are refused: none of them can be the
//!   single endpoint of a service.
//! - Flags are 1-4 hex digits with an optional `0x`/`0X`; bits outside [`Flags::KNOWN`] are an
//!   error, so a typo cannot silently switch logging off.
//! - Interface names follow the kernel's `dev_valid_name` (1-15 bytes; no `/`, `:`, whitespace,
//!   NUL; not `.` or `..`) and may not start with `#`, which would begin a comment in the file.

use std::net::IpAddr;

use super::{AppAddr, Flags, Protocol, Service};

/// A grammar error at a 1-based column of the line.
///
/// For [`parse_service`] the column counts characters (a tab is one column). For
/// [`parse_service_words`] it is the 1-based number of the word in the slice. An error about a
/// missing field points just past the last word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrammarError {
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for GrammarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for GrammarError {}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFACE_LEN: usize = 15;

/// The flags as the seed's users know them, for error messages.
const FLAG_NAMES: [(u16, &str); 5] = [
    (Flags::MAPPING_EVENT, "mapping event"),
    (Flags::VOLUME, "volume"),
    (Flags::EVERY_PACKET, "every packet"),
    (Flags::DROPS, "drops"),
    (Flags::ICMP, "ICMP"),
];

/// Parses one `service ...` line.
pub fn parse_service(line: &str) -> Result<Service, GrammarError> {
    let words = split_words(line);
    parse_words(&words, end_column(&words))
}

/// The same, from words already split (the CLI's `service add ...`).
///
/// The leading keyword is optional here: `["service", "eth0", "port", ...]` and
/// `["eth0", "port", ...]` both work. A first word `service` is taken as the keyword unless the
/// second word is `port` and the third is not, so an interface that is itself called `service`
/// (or `port`) still parses. Error columns are the 1-based word numbers in `words` as given; a
/// missing field reports `words.len() + 1`.
pub fn parse_service_words(words: &[&str]) -> Result<Service, GrammarError> {
    let located: Vec<Word<'_>> = words
        .iter()
        .enumerate()
        .map(|(i, w)| Word {
            text: w,
            column: i + 1,
        })
        .collect();
    let is = |i: usize, kw: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(kw));
    let with_keyword = is(0, "service") && (!is(1, "port") || is(2, "port"));
    if with_keyword {
        parse_words(&located, words.len() + 1)
    } else {
        parse_fields(&located, words.len() + 1)
    }
}

/// A word of a line and the column it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Word<'a> {
    pub text: &'a str,
    pub column: usize,
}

/// Splits a line at whitespace, remembering the 1-based character column of each word.
pub(super) fn split_words(line: &str) -> Vec<Word<'_>> {
    let mut words = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (byte offset, column) of the current word
    for (column, (offset, c)) in (1..).zip(line.char_indices()) {
        match (c.is_whitespace(), start) {
            (true, Some((s, col))) => {
                words.push(Word {
                    text: &line[s..offset],
                    column: col,
                });
                start = None;
            }
            (false, None) => start = Some((offset, column)),
            _ => {}
        }
    }
    if let Some((s, col)) = start {
        words.push(Word {
            text: &line[s..],
            column: col,
        });
    }
    words
}

/// The column just past the last word: where a missing field would have started.
pub(super) fn end_column(words: &[Word<'_>]) -> usize {
    words
        .last()
        .map_or(1, |w| w.column + w.text.chars().count())
}

/// Parses a whole `service` line from its words, the keyword included.
pub(super) fn parse_words(words: &[Word<'_>], end: usize) -> Result<Service, GrammarError> {
    match words.first() {
        None => Err(GrammarError {
            column: end,
            message: "missing field: keyword \"service\"".into(),
        }),
        Some(w) if w.text.eq_ignore_ascii_case("service") => parse_fields(&words[1..], end),
        Some(w) => Err(err(
            w,
            format!("expected the keyword \"service\", found {:?}", w.text),
        )),
    }
}

/// Parses the fields after the `service` keyword.
fn parse_fields(words: &[Word<'_>], end: usize) -> Result<Service, GrammarError> {
    let mut it = words.iter();
    let mut next = |what: &str| {
        it.next().copied().ok_or_else(|| GrammarError {
            column: end,
            message: format!("missing field: {what}"),
        })
    };

    let w = next("interface")?;
    let iface = parse_iface(w.text).map_err(|m| err(&w, m))?;

    let w = next("keyword \"port\"")?;
    if !w.text.eq_ignore_ascii_case("port") {
        return Err(err(
            &w,
            format!("expected the keyword \"port\", found {:?}", w.text),
        ));
    }

    let app_word = next("apparent address")?;
    let app_addr = if app_word.text == "*" {
        AppAddr::Interface
    } else {
        AppAddr::Fixed(parse_addr(app_word.text, "apparent").map_err(|m| err(&app_word, m))?)
    };

    let w = next("apparent port")?;
    let app_port = parse_port(w.text).map_err(|m| err(&w, m))?;

    let w = next("protocol")?;
    let protocol = parse_protocol(w.text).map_err(|m| err(&w, m))?;

    let act_word = next("actual address")?;
    if act_word.text == "*" {
        return Err(err(
            &act_word,
            "\"*\" stands only for the apparent address; the actual address must be an IP address"
                .into(),
        ));
    }
    let act_addr = parse_addr(act_word.text, "actual").map_err(|m| err(&act_word, m))?;
    if let AppAddr::Fixed(app) = app_addr
        && app.is_ipv6() != act_addr.is_ipv6()
    {
        return Err(err(
            &act_word,
            format!(
                "apparent address {app} is {} but actual address {act_addr} is {} \
                 (both must be of the same family)",
                family(app),
                family(act_addr)
            ),
        ));
    }

    let w = next("actual port")?;
    let act_port = parse_port(w.text).map_err(|m| err(&w, m))?;

    let flags = match it.next() {
        None => Flags::default(),
        Some(w) => parse_flags(w.text).map_err(|m| err(w, m))?,
    };

    if let Some(w) = it.next() {
        return Err(err(
            w,
            format!(
                "unexpected {:?} after the flags (nothing may follow them)",
                w.text
            ),
        ));
    }

    Ok(Service {
        iface,
        app_addr,
        app_port,
        protocol,
        act_addr,
        act_port,
        flags,
    })
}

fn err(w: &Word<'_>, message: String) -> GrammarError {
    GrammarError {
        column: w.column,
        message,
    }
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv6() { "IPv6" } else { "IPv4" }
}

/// Checks a Linux interface name the way the kernel's `dev_valid_name` does.
pub(super) fn parse_iface(text: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("invalid interface name {text:?}: {why}"));
    if text.is_empty() {
        return bad("it is empty");
    }
    if text.len() > MAX_IFACE_LEN {
        return bad(&format!("longer than {MAX_IFACE_LEN} bytes"));
    }
    if text == "." || text == ".." {
        return bad("\".\" and \"..\" are not interface names");
    }
    if let Some(c) = text
        .chars()
        .find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad(&format!("it contains {c:?}"));
    }
    if text.starts_with('#') {
        // The configuration file could not hold it: `#` after whitespace starts a comment.
        return bad("it starts with '#', which begins a comment in the configuration file");
    }
    Ok(text.to_owned())
}

/// A port: decimal 1-65535, digits only, no leading zeros.
pub(super) fn parse_port(text: &str) -> Result<u16, String> {
    let fail = || Err(format!("expected a port number 1-65535, found {text:?}"));
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 5 {
        return fail();
    }
    if text.starts_with('0') {
        return if text == "0" {
            fail()
        } else {
            Err(format!(
                "expected a port number 1-65535, found {text:?} (leading zeros are not allowed)"
            ))
        };
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => fail(),
    }
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    if text.eq_ignore_ascii_case("tcp") {
        Ok(Protocol::Tcp)
    } else if text.eq_ignore_ascii_case("udp") {
        Ok(Protocol::Udp)
    } else {
        Err(format!("unknown protocol {text:?} (expected TCP or UDP)"))
    }
}

/// An IPv4 or IPv6 address usable as one end of a service. `role` is "apparent" or "actual".
fn parse_addr(text: &str, role: &str) -> Result<IpAddr, String> {
    let addr: IpAddr = match text.parse() {
        Ok(a) => a,
        Err(_) => {
            let hint = if text.starts_with('[') {
                " (write IPv6 addresses without brackets)"
            } else if text.contains('%') {
                " (zone indexes are not supported)"
            } else {
                ""
            };
            let star = if role == "apparent" { " or \"*\"" } else { "" };
            return Err(format!(
                "expected an IPv4 or IPv6 address{star} for the {role} address, found {text:?}{hint}"
            ));
        }
    };
    let why = match addr {
        _ if addr.is_unspecified() => Some("unspecified"),
        _ if addr.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("IPv4-mapped (write the IPv4 address itself)")
        }
        _ => None,
    };
    match why {
        Some(why) => Err(format!(
            "{role} address {addr} is {why}; a service needs a unicast address"
        )),
        None => Ok(addr),
    }
}

/// Flags: 1-4 hex digits, optional `0x`/`0X`, only bits netnat knows.
pub(super) fn parse_flags(text: &str) -> Result<Flags, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected flags as 1-4 hex digits (e.g. 0x8000), found {text:?}"
        ));
    }
    let value = u16::from_str_radix(digits, 16).map_err(|e| e.to_string())?;
    let unknown = value & !Flags::KNOWN;
    if unknown != 0 {
        let known: Vec<String> = FLAG_NAMES
            .iter()
            .map(|(bit, name)| format!("{bit:#06x} {name}"))
            .collect();
        return Err(format!(
            "unknown flag bits {unknown:#06x} in {value:#06x} (known bits: {})",
            known.join(", ")
        ));
    }
    Ok(Flags(value))
}
