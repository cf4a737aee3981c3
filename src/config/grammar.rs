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
//!   NUL; not `.` or `..`) and may not contain `#`, which begins a comment in the file.
//!
//! Issue 13's forms extend the line without changing what an existing line means:
//!
//! ```text
//! service <int> port <app IP|*> <port[-last]> <TCP|UDP> <act IP[,act IP...]> <port[-last]>
//!         [flags] [from <addr[/len]>[,<addr[/len]>...]] [hairpin]
//! ```
//!
//! - An apparent range `first-last` (first <= last; `80-80` is port 80) maps onto an actual
//!   range of the same size, 1:1, or onto one actual port. An actual range needs an apparent
//!   range of the same size.
//! - Several actual servers are one word, comma-separated, without spaces, all of the
//!   service's family and each once.
//! - `from` takes one word: addresses or prefixes, comma-separated, of the service's family;
//!   a prefix has no bits set past its length (`10.0.0.0/8`, not `10.1.2.3/8`), each once.
//! - `from` and `hairpin` follow the flags (when given), in either order, each at most once.
//! - In the file, an error inside a list points at the item's own column.

use std::net::IpAddr;

use super::{AppAddr, Flags, Prefix, Protocol, Service};

/// A field of a `service` line, or of another directive of the file: what an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The leading `service` keyword (or, in the file, the directive name).
    Keyword,
    Interface,
    /// The keyword `port`.
    PortKeyword,
    AppAddr,
    AppPort,
    Protocol,
    ActAddr,
    ActPort,
    Flags,
    /// The `from` list (or its keyword).
    From,
    /// The keyword `hairpin`.
    Hairpin,
    /// A word past the last field.
    Trailing,
    /// The value of a setting directive, by its name (`queue`, `log-rate`, ...).
    Setting(&'static str),
}

/// A grammar error at a 1-based column of the line, about one field.
///
/// For [`parse_service`] the column counts characters (a tab is one column). For
/// [`parse_service_words`] it is the 1-based number of the word in the slice. An error about a
/// missing field points just past the last word.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct GrammarError {
    pub column: usize,
    pub field: Field,
    pub message: String,
}

/// A service as a request gave it: whether its flags were written matters to `service del`,
/// which compares them only then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GivenService {
    pub service: Service,
    /// The words ended with flags (else `service.flags` is the default, 0).
    pub flags_given: bool,
}

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
    parse_given_words(words).map(|g| g.service)
}

/// [`parse_service_words`], also telling whether the words gave the flags.
pub fn parse_given_words(words: &[&str]) -> Result<GivenService, GrammarError> {
    let located: Vec<Word<'_>> = words
        .iter()
        .enumerate()
        .map(|(i, w)| Word {
            text: w,
            column: i + 1,
            in_line: false,
        })
        .collect();
    let is = |i: usize, kw: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(kw));
    let with_keyword = is(0, "service") && (!is(1, "port") || is(2, "port"));
    if with_keyword {
        parse_keyword_words(&located, words.len() + 1)
    } else {
        parse_fields(&located, words.len() + 1)
    }
}

/// A word of a line and the column it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Word<'a> {
    pub text: &'a str,
    pub column: usize,
    /// Columns are characters of a line (the file), so a list item has its own column; else
    /// they are word numbers (the CLI), and every item is at its word's.
    pub in_line: bool,
}

impl Word<'_> {
    /// The column of the character `offset` bytes into the word (its own column on the CLI).
    fn column_at(&self, offset: usize) -> usize {
        if self.in_line {
            self.column + self.text[..offset].chars().count()
        } else {
            self.column
        }
    }
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
                    in_line: true,
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
            in_line: true,
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
    parse_keyword_words(words, end).map(|g| g.service)
}

fn parse_keyword_words(words: &[Word<'_>], end: usize) -> Result<GivenService, GrammarError> {
    match words.first() {
        None => Err(GrammarError {
            column: end,
            field: Field::Keyword,
            message: "missing field: keyword \"service\"".into(),
        }),
        Some(w) if w.text.eq_ignore_ascii_case("service") => parse_fields(&words[1..], end),
        Some(w) => Err(err(
            w,
            Field::Keyword,
            format!("expected the keyword \"service\", found {:?}", w.text),
        )),
    }
}

/// Parses the fields after the `service` keyword.
fn parse_fields(words: &[Word<'_>], end: usize) -> Result<GivenService, GrammarError> {
    let mut it = words.iter();
    let mut next = |field: Field, what: &str| {
        it.next().copied().ok_or_else(|| GrammarError {
            column: end,
            field,
            message: format!("missing field: {what}"),
        })
    };

    let w = next(Field::Interface, "interface")?;
    let iface = parse_iface(w.text).map_err(|m| err(&w, Field::Interface, m))?;

    let w = next(Field::PortKeyword, "keyword \"port\"")?;
    if !w.text.eq_ignore_ascii_case("port") {
        return Err(err(
            &w,
            Field::PortKeyword,
            format!("expected the keyword \"port\", found {:?}", w.text),
        ));
    }

    let app_word = next(Field::AppAddr, "apparent address")?;
    let app_addr = if app_word.text == "*" {
        AppAddr::Interface
    } else {
        AppAddr::Fixed(
            parse_addr(app_word.text, "apparent").map_err(|m| err(&app_word, Field::AppAddr, m))?,
        )
    };

    let app_port_word = next(Field::AppPort, "apparent port")?;
    let (app_port, app_port_last) =
        parse_port_range(app_port_word.text).map_err(|m| err(&app_port_word, Field::AppPort, m))?;

    let w = next(Field::Protocol, "protocol")?;
    let protocol = parse_protocol(w.text).map_err(|m| err(&w, Field::Protocol, m))?;

    let act_word = next(Field::ActAddr, "actual address")?;
    if act_word.text == "*" {
        return Err(err(
            &act_word,
            Field::ActAddr,
            "\"*\" stands only for the apparent address; the actual address must be an IP address"
                .into(),
        ));
    }
    let mut servers: Vec<IpAddr> = Vec::new();
    for (offset, item) in items(act_word.text) {
        let at = |m: String| GrammarError {
            column: act_word.column_at(offset),
            field: Field::ActAddr,
            message: m,
        };
        if item.is_empty() {
            return Err(at(format!(
                "empty server in the list {:?} (write the servers comma-separated, without \
                 spaces)",
                act_word.text
            )));
        }
        let addr = parse_addr(item, "actual").map_err(at)?;
        if let Some(&first) = servers.first()
            && first.is_ipv6() != addr.is_ipv6()
        {
            return Err(at(format!(
                "server {addr} is {} but server {first} is {} (the servers of a service are \
                 of one family)",
                family(addr),
                family(first)
            )));
        }
        if let AppAddr::Fixed(app) = app_addr
            && app.is_ipv6() != addr.is_ipv6()
        {
            return Err(at(format!(
                "apparent address {app} is {} but actual address {addr} is {} \
                 (both must be of the same family)",
                family(app),
                family(addr)
            )));
        }
        if servers.contains(&addr) {
            return Err(at(format!("server {addr} is listed twice")));
        }
        if servers.len() == super::MAX_SERVERS {
            return Err(at(format!(
                "server {addr} is one too many: a service has at most {} servers",
                super::MAX_SERVERS
            )));
        }
        servers.push(addr);
    }
    let act_addr = servers[0];

    let w = next(Field::ActPort, "actual port")?;
    let (act_port, act_port_last) =
        parse_port_range(w.text).map_err(|m| err(&w, Field::ActPort, m))?;
    if act_port_last != act_port {
        let (app_n, act_n) = (
            u32::from(app_port_last - app_port) + 1,
            u32::from(act_port_last - act_port) + 1,
        );
        if app_n != act_n {
            let app = if app_n == 1 {
                format!("the one apparent port {app_port}")
            } else {
                format!("the apparent range {app_port}-{app_port_last} ({app_n} ports)")
            };
            return Err(err(
                &w,
                Field::ActPort,
                format!(
                    "the actual range {act_port}-{act_port_last} has {act_n} ports but {app} \
                     maps onto it: an actual range needs an apparent range of the same size \
                     (or give one actual port)"
                ),
            ));
        }
    }

    let mut rest = it.peekable();
    let is_keyword = |w: &Word<'_>| {
        w.text.eq_ignore_ascii_case("from") || w.text.eq_ignore_ascii_case("hairpin")
    };
    let flags = match rest.next_if(|w| !is_keyword(w)) {
        None => None,
        Some(w) => Some(parse_flags(w.text).map_err(|m| err(w, Field::Flags, m))?),
    };

    let family_name = family(act_addr);
    let mut from: Option<Vec<Prefix>> = None;
    let mut hairpin = false;
    while let Some(w) = rest.next() {
        if w.text.eq_ignore_ascii_case("from") {
            if from.is_some() {
                return Err(err(w, Field::From, "\"from\" given twice".into()));
            }
            let Some(list) = rest.next() else {
                return Err(GrammarError {
                    column: end,
                    field: Field::From,
                    message: "missing field: the clients after \"from\" (addresses or \
                              prefixes, comma-separated)"
                        .into(),
                });
            };
            from = Some(parse_from(list, act_addr.is_ipv6(), family_name)?);
        } else if w.text.eq_ignore_ascii_case("hairpin") {
            if hairpin {
                return Err(err(w, Field::Hairpin, "\"hairpin\" given twice".into()));
            }
            hairpin = true;
        } else {
            // Not flags (those come right after the actual port, and were read there).
            return Err(err(
                w,
                Field::Trailing,
                format!(
                    "unexpected {:?} after the flags (only \"from\" and \"hairpin\" may \
                     follow them)",
                    w.text
                ),
            ));
        }
    }

    Ok(GivenService {
        service: Service {
            iface,
            app_addr,
            app_port,
            app_port_last,
            protocol,
            act_addr,
            more_act_addrs: servers[1..].to_vec(),
            act_port,
            act_port_last,
            flags: flags.unwrap_or_default(),
            from: from.unwrap_or_default(),
            hairpin,
        },
        flags_given: flags.is_some(),
    })
}

/// The comma-separated items of a word, each with its byte offset in the word.
fn items(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    text.split(',').map(move |item| {
        let at = offset;
        offset += item.len() + 1;
        (at, item)
    })
}

/// A `from` list: addresses or prefixes of one family, comma-separated, each once.
fn parse_from(w: &Word<'_>, v6: bool, family_name: &str) -> Result<Vec<Prefix>, GrammarError> {
    let mut out: Vec<Prefix> = Vec::new();
    for (offset, item) in items(w.text) {
        let at = |m: String| GrammarError {
            column: w.column_at(offset),
            field: Field::From,
            message: m,
        };
        if item.is_empty() {
            return Err(at(format!(
                "empty client in the list {:?} (write addresses or prefixes comma-separated, \
                 without spaces)",
                w.text
            )));
        }
        let p = parse_prefix(item).map_err(at)?;
        if p.addr.is_ipv6() != v6 {
            return Err(at(format!(
                "client {p} is {} but the service is {family_name} (a from list holds the \
                 service's family)",
                family(p.addr)
            )));
        }
        if out.contains(&p) {
            return Err(at(format!("client {p} is listed twice")));
        }
        out.push(p);
    }
    Ok(out)
}

/// `addr` or `addr/len`, with no host bits set past `len`.
fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let (addr_text, len_text) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!("expected a client address or prefix (such as 198.51.100.0/24), found {text:?}")
    })?;
    if let IpAddr::V6(a) = addr
        && a.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "client {addr} is IPv4-mapped (write the IPv4 address itself)"
        ));
    }
    let max: u8 = if addr.is_ipv6() { 128 } else { 32 };
    let len = match len_text {
        None => max,
        Some(l) => {
            let ok = !l.is_empty()
                && l.len() <= 3
                && l.bytes().all(|b| b.is_ascii_digit())
                && (l == "0" || !l.starts_with('0'));
            match l.parse::<u8>().ok().filter(|n| ok && *n <= max) {
                Some(n) => n,
                None => {
                    return Err(format!(
                        "expected a prefix length 0-{max} after \"/\" in {text:?}"
                    ));
                }
            }
        }
    };
    let p = Prefix { addr, len };
    let masked = Prefix {
        addr: mask(addr, len),
        len,
    };
    if masked != p {
        return Err(format!(
            "prefix {text} has bits set past its length /{len}: write {masked}"
        ));
    }
    Ok(p)
}

/// `a` with every bit past the first `len` cleared.
fn mask(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// A port or a range `first-last` (first <= last), each 1-65535: `(first, last)`.
pub(super) fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let Some((a, b)) = text.split_once('-') else {
        let p = parse_port(text)?;
        return Ok((p, p));
    };
    if a.is_empty() {
        // `-80` is no range; say what a port is.
        return Err(format!("expected a port number 1-65535, found {text:?}"));
    }
    let first = parse_port(a).map_err(|m| format!("{m} as the first port of {text:?}"))?;
    if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) && !b.starts_with('0') {
        // Digits only: a number too big for a port is a range past the last port.
        if b.len() > 5 || b.parse::<u32>().is_ok_and(|n| n > 65535) {
            return Err(format!("the range {text} goes past 65535, the last port"));
        }
    }
    let last = parse_port(b).map_err(|m| format!("{m} as the last port of {text:?}"))?;
    if last < first {
        return Err(format!(
            "the range {text} is reversed: write the lower port first ({last}-{first})"
        ));
    }
    Ok((first, last))
}

fn err(w: &Word<'_>, field: Field, message: String) -> GrammarError {
    GrammarError {
        column: w.column,
        field,
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
    if text.contains('#') {
        // The configuration file could not hold it (`service add --save` writes it there).
        return bad("it contains '#', which begins a comment in the configuration file");
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ok(line: &str) -> Service {
        parse_service(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// The error for `line`, checked to sit at `column` and to contain `needle`.
    fn fails(line: &str, column: usize, needle: &str) -> GrammarError {
        let e = parse_service(line).expect_err(line);
        assert_eq!(e.column, column, "{line:?}: {e}");
        assert!(
            e.message.contains(needle),
            "{line:?}: {:?} lacks {needle:?}",
            e.message
        );
        e
    }

    const BASE: &str = "service eth0 port * 80 TCP 192.168.1.10 8080";

    #[test]
    fn seed_example_ppp0() {
        let s = ok("service ppp0 port * 80 TCP 192.168.1.10 8080 0x8000");
        assert_eq!(s.iface, "ppp0");
        assert_eq!(s.app_addr, AppAddr::Interface);
        assert_eq!(s.app_port, 80);
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.act_addr, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)));
        assert_eq!(s.act_port, 8080);
        assert_eq!(s.flags, Flags(0x8000));
    }

    #[test]
    fn seed_example_en0_lower_case_udp_no_flags() {
        let s = ok("service en0 port 203.0.113.5 53 udp 192.168.1.53 53");
        assert_eq!(
            s.app_addr,
            AppAddr::Fixed(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)))
        );
        assert_eq!(s.protocol, Protocol::Udp);
        assert_eq!(s.flags, Flags(0));
        assert_eq!(
            s.to_string(),
            "service en0 port 203.0.113.5 53 UDP 192.168.1.53 53 0x0000"
        );
    }

    #[test]
    fn seed_example_tr0_flags_without_prefix() {
        let s = ok("service tr0 port * 25 TCP 10.0.0.25 25 c000");
        assert_eq!(s.flags, Flags(0xc000));
        assert_eq!(
            s.to_string(),
            "service tr0 port * 25 TCP 10.0.0.25 25 0xc000"
        );
    }

    #[test]
    fn flags_spellings() {
        for (text, value) in [
            ("0x8000", 0x8000),
            ("0X8000", 0x8000),
            ("8000", 0x8000),
            ("0", 0),
            ("0x0", 0),
            ("0xF800", 0xf800),
            ("800", 0x0800),
        ] {
            assert_eq!(ok(&format!("{BASE} {text}")).flags, Flags(value), "{text}");
        }
    }

    #[test]
    fn ipv6_both_sides_and_star() {
        let s = ok("service eth0 port 2001:db8::5 443 tcp fd00::10 8443 0x4000");
        assert_eq!(s.app_addr, AppAddr::Fixed("2001:db8::5".parse().unwrap()));
        assert_eq!(
            s.act_addr,
            IpAddr::V6("fd00::10".parse::<Ipv6Addr>().unwrap())
        );
        let s = ok("service eth0 port * 443 TCP fd00::10 443");
        assert!(s.is_ipv6());
        assert_eq!(s.app_addr, AppAddr::Interface);
    }

    #[test]
    fn case_insensitive_keywords_and_protocol() {
        let s = ok("SERVICE eth0 PORT * 80 Tcp 10.0.0.1 80");
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(
            ok("service eth0 port * 80 uDp 10.0.0.1 80").protocol,
            Protocol::Udp
        );
    }

    #[test]
    fn tabs_and_runs_of_spaces_separate_words() {
        let s = ok("  service\teth0   port *\t80 TCP 10.0.0.1 80  ");
        assert_eq!(s.act_port, 80);
    }

    #[test]
    fn port_bounds() {
        assert_eq!(
            ok("service eth0 port * 1 TCP 10.0.0.1 65535").act_port,
            65535
        );
        // Each refused apparent port at its column, 21.
        for (port, why) in [
            ("0", "expected a port number 1-65535, found \"0\""),
            ("65536", "found \"65536\""),
            ("99999999999", "found \"99999999999\""),
            ("+80", "found \"+80\""),
            ("-80", "found \"-80\""),
            ("080", "leading zeros"),
        ] {
            fails(
                &format!("service eth0 port * {port} TCP 10.0.0.1 80"),
                21,
                why,
            );
        }
        let e = fails("service eth0 port * http TCP 10.0.0.1 80", 21, "");
        assert_eq!(e.message, "expected a port number 1-65535, found \"http\"");
        fails("service eth0 port * 80 TCP 10.0.0.1 0", 37, "found \"0\"");
        fails(
            "service eth0 port * 80 TCP 10.0.0.1 65536",
            37,
            "found \"65536\"",
        );
    }

    #[test]
    fn bad_addresses() {
        fails(
            "service eth0 port 1.2.3 80 TCP 10.0.0.1 80",
            19,
            "apparent address, found \"1.2.3\"",
        );
        fails(
            "service eth0 port * 80 TCP 10.0.0.300 80",
            28,
            "actual address, found \"10.0.0.300\"",
        );
        fails(
            "service eth0 port * 80 TCP [fd00::1] 80",
            28,
            "without brackets",
        );
        fails("service eth0 port * 80 TCP fe80::1%eth1 80", 28, "zone");
        fails(
            "service eth0 port * 80 TCP 010.0.0.1 80",
            28,
            "found \"010.0.0.1\"",
        );
        fails(
            "service eth0 port * 80 TCP * 80",
            28,
            "must be an IP address",
        );
        fails(
            "service eth0 port ** 80 TCP 10.0.0.1 80",
            19,
            "found \"**\"",
        );
    }

    #[test]
    fn reserved_addresses() {
        for (addr, why) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::ffff:10.0.0.1", "IPv4-mapped"),
        ] {
            let v6 = addr.contains(':');
            let other = if v6 { "fd00::1" } else { "10.0.0.1" };
            fails(&format!("service eth0 port * 80 TCP {addr} 80"), 28, why);
            let e = fails(
                &format!("service eth0 port {addr} 80 TCP {other} 80"),
                19,
                why,
            );
            assert!(e.message.starts_with("apparent address"), "{}", e.message);
        }
    }

    #[test]
    fn mixed_families() {
        let e = fails(
            "service eth0 port 203.0.113.5 80 TCP fd00::1 80",
            38,
            "same family",
        );
        assert_eq!(
            e.message,
            "apparent address 203.0.113.5 is IPv4 but actual address fd00::1 is IPv6 \
             (both must be of the same family)"
        );
        fails(
            "service eth0 port 2001:db8::1 80 TCP 10.0.0.1 80",
            38,
            "is IPv6 but",
        );
    }

    #[test]
    fn missing_fields_point_past_the_end() {
        let line = "service eth0 port * 80 TCP 10.0.0.1";
        let e = fails(line, line.len() + 1, "");
        assert_eq!(e.message, "missing field: actual port");
        fails(
            "service eth0 port * 80 TCP",
            27,
            "missing field: actual address",
        );
        fails("service eth0 port * 80", 23, "missing field: protocol");
        fails("service eth0 port *", 20, "missing field: apparent port");
        fails("service eth0 port", 18, "missing field: apparent address");
        fails("service eth0", 13, "missing field: keyword \"port\"");
        fails("service", 8, "missing field: interface");
        fails("", 1, "missing field: keyword \"service\"");
        fails("   ", 1, "missing field");
    }

    #[test]
    fn wrong_keywords() {
        fails(
            "servic eth0 port * 80 TCP 10.0.0.1 80",
            1,
            "expected the keyword \"service\"",
        );
        fails(
            "service eth0 prot * 80 TCP 10.0.0.1 80",
            14,
            "expected the keyword \"port\", found \"prot\"",
        );
    }

    #[test]
    fn unknown_protocol() {
        let e = fails("service eth0 port * 80 SCTP 10.0.0.1 80", 24, "");
        assert_eq!(e.message, "unknown protocol \"SCTP\" (expected TCP or UDP)");
        fails(
            "service eth0 port * 80 6 10.0.0.1 80",
            24,
            "unknown protocol \"6\"",
        );
    }

    #[test]
    fn bad_flags() {
        let e = fails(
            &format!("{BASE} 0x8001"),
            46,
            "unknown flag bits 0x0001 in 0x8001",
        );
        assert!(e.message.contains("0x8000 mapping event"), "{}", e.message);
        fails(&format!("{BASE} 0x0401"), 46, "unknown flag bits 0x0401");
        fails(
            &format!("{BASE} ffff"),
            46,
            "unknown flag bits 0x07ff in 0xffff",
        );
        fails(&format!("{BASE} 0x18000"), 46, "1-4 hex digits");
        fails(&format!("{BASE} 10000"), 46, "1-4 hex digits");
        fails(&format!("{BASE} 0x"), 46, "found \"0x\"");
        fails(&format!("{BASE} 0xg000"), 46, "found \"0xg000\"");
        fails(&format!("{BASE} +800"), 46, "found \"+800\"");
    }

    #[test]
    fn too_many_fields() {
        let e = fails(&format!("{BASE} 0x8000 extra"), 53, "");
        assert_eq!(
            e.message,
            "unexpected \"extra\" after the flags (only \"from\" and \"hairpin\" may follow \
             them)"
        );
        // Comments belong to the file, not to the grammar.
        fails(&format!("{BASE} 0x8000 # web"), 53, "unexpected \"#\"");
    }

    #[test]
    fn interface_names() {
        assert_eq!(
            ok("service abcdefghijklmno port * 80 TCP 10.0.0.1 80")
                .iface
                .len(),
            15
        );
        assert_eq!(
            ok("service eth0.100 port * 80 TCP 10.0.0.1 80").iface,
            "eth0.100"
        );
        assert_eq!(
            ok("service pub-0_x port * 80 TCP 10.0.0.1 80").iface,
            "pub-0_x"
        );
        // Each name is refused at its own column, 9, saying why.
        for (name, why) in [
            ("abcdefghijklmnop", "longer than 15 bytes"),
            // 8 two-byte characters: 16 bytes although 8 characters.
            ("éééééééé", "longer than 15 bytes"),
            ("eth/0", "'/'"),
            ("eth0:1", "':'"),
            (".", "\".\""),
            ("..", "\"..\""),
            ("#x", "comment"),
            // `service add` would save it to the file, where `#` starts a comment anywhere.
            ("eth#1", "contains '#'"),
            ("eth\u{0}0", "'\\0'"),
        ] {
            fails(&format!("service {name} port * 80 TCP 10.0.0.1 80"), 9, why);
        }
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // "é" is two bytes; the error is reported at the character column.
        let e = parse_service("service é port * 8x TCP 10.0.0.1 80").unwrap_err();
        assert_eq!(e.column, 18); // bytes would say 19
        let e = parse_service("\tservice eth0 port * 80 TCP 10.0.0.1 http").unwrap_err();
        assert_eq!(e.column, 38);
    }

    #[test]
    fn words_with_and_without_keyword() {
        let line = ok("service eth0 port * 80 TCP 192.168.1.10 8080 0x8000");
        let with = [
            "service",
            "eth0",
            "port",
            "*",
            "80",
            "TCP",
            "192.168.1.10",
            "8080",
            "0x8000",
        ];
        assert_eq!(parse_service_words(&with), Ok(line.clone()));
        assert_eq!(parse_service_words(&with[1..]), Ok(line));
        // An interface called "service" or "port" still parses.
        let s = parse_service_words(&["service", "port", "*", "80", "TCP", "10.0.0.1", "80"]);
        assert_eq!(s.unwrap().iface, "service");
        let s = parse_service_words(&[
            "service", "port", "port", "*", "80", "TCP", "10.0.0.1", "80",
        ]);
        assert_eq!(s.unwrap().iface, "port");
        let s = parse_service_words(&[
            "service", "service", "port", "*", "80", "TCP", "10.0.0.1", "80",
        ]);
        assert_eq!(s.unwrap().iface, "service");
    }

    #[test]
    fn words_columns_are_word_numbers() {
        let e = parse_service_words(&["eth0", "port", "*", "http", "TCP", "10.0.0.1", "80"])
            .unwrap_err();
        assert_eq!(e.column, 4);
        assert_eq!(e.message, "expected a port number 1-65535, found \"http\"");
        let e = parse_service_words(&[
            "service", "eth0", "port", "*", "80", "SCTP", "10.0.0.1", "80",
        ])
        .unwrap_err();
        assert_eq!(e.column, 6);
        let e = parse_service_words(&["eth0", "port", "*", "80", "TCP", "10.0.0.1"]).unwrap_err();
        assert_eq!(
            (e.column, e.message.as_str()),
            (7, "missing field: actual port")
        );
        let e = parse_service_words(&[]).unwrap_err();
        assert_eq!(
            (e.column, e.message.as_str()),
            (1, "missing field: interface")
        );
        // A word the shell kept whole with a space inside is no interface name.
        let e = parse_service_words(&["eth0 x", "port", "*", "80", "TCP", "10.0.0.1", "80"])
            .unwrap_err();
        assert_eq!(e.column, 1);
        assert!(e.message.contains("' '"), "{}", e.message);
        let e =
            parse_service_words(&["eth0", "port", "*", "80", "TCP", "10.0.0.1", "80", "0", "x"])
                .unwrap_err();
        assert_eq!(e.column, 9);
    }

    #[test]
    fn errors_name_their_field() {
        for (line, field) in [
            ("servic eth0 port * 80 TCP 10.0.0.1 80", Field::Keyword),
            ("service eth/0 port * 80 TCP 10.0.0.1 80", Field::Interface),
            ("service eth0 prot * 80 TCP 10.0.0.1 80", Field::PortKeyword),
            ("service eth0 port 1.2.3 80 TCP 10.0.0.1 80", Field::AppAddr),
            ("service eth0 port * 0 TCP 10.0.0.1 80", Field::AppPort),
            ("service eth0 port * 80 SCTP 10.0.0.1 80", Field::Protocol),
            ("service eth0 port * 80 TCP * 80", Field::ActAddr),
            ("service eth0 port * 80 TCP 10.0.0.1", Field::ActPort),
            ("service eth0 port * 80 TCP 10.0.0.1 80 0x1", Field::Flags),
            (
                "service eth0 port * 80 TCP 10.0.0.1 80 0 x",
                Field::Trailing,
            ),
        ] {
            assert_eq!(parse_service(line).unwrap_err().field, field, "{line}");
        }
    }

    #[test]
    fn words_tell_whether_flags_were_given() {
        let without = ["eth0", "port", "*", "80", "TCP", "10.0.0.1", "80"];
        let g = parse_given_words(&without).unwrap();
        assert!(!g.flags_given);
        assert_eq!(g.service.flags, Flags(0));
        // "0" is given flags, not the absence of them.
        let with_zero = [
            "service", "eth0", "port", "*", "80", "TCP", "10.0.0.1", "80", "0",
        ];
        let g = parse_given_words(&with_zero).unwrap();
        assert!(g.flags_given);
        assert_eq!(g.service, parse_service_words(&without).unwrap());
        // An interface called "service" without flags: eight words, none of them flags.
        let iface_service = [
            "service", "port", "*", "80", "TCP", "10.0.0.1", "80", "8000",
        ];
        let g = parse_given_words(&iface_service).unwrap();
        assert!(g.flags_given && g.service.iface == "service");
    }

    /// The five lines of issue 13, each read as the issue means it.
    #[test]
    fn issue_13_forms() {
        let s = ok("service pub0 port * 8000-8009 TCP 192.168.77.10 9000-9009 0x8000");
        assert_eq!((s.app_port, s.app_port_last), (8000, 8009));
        assert_eq!((s.act_port, s.act_port_last), (9000, 9009));
        assert_eq!(s.act_port_for(8003), Some(9003));
        assert_eq!(s.act_port_for(8010), None);
        assert_eq!(s.app_port_for(9009), Some(8009));
        assert!(s.is_range() && !s.is_many_to_one());

        let s = ok("service pub0 port * 6000-6009 UDP 192.168.77.10 7000");
        assert_eq!((s.act_port, s.act_port_last), (7000, 7000));
        assert_eq!(s.act_port_for(6007), Some(7000));
        assert!(s.is_many_to_one());
        assert_eq!(s.app_port_for(7000), None, "only the flow knows");

        let s = ok("service pub0 port * 80 TCP 192.168.77.10,192.168.77.11 8080 0x8000");
        assert_eq!(s.act_addr, IpAddr::V4(Ipv4Addr::new(192, 168, 77, 10)));
        assert_eq!(
            s.more_act_addrs,
            [IpAddr::V4(Ipv4Addr::new(192, 168, 77, 11))]
        );
        assert_eq!(s.servers().count(), 2);
        assert!(!s.is_range());

        let s = ok("service pub0 port * 22 TCP 192.168.77.10 22 from 198.51.100.0/24,203.0.113.7");
        assert_eq!(s.flags, Flags(0));
        assert_eq!(
            s.from,
            [
                Prefix {
                    addr: "198.51.100.0".parse().unwrap(),
                    len: 24
                },
                Prefix {
                    addr: "203.0.113.7".parse().unwrap(),
                    len: 32
                }
            ]
        );
        assert!(s.admits("198.51.100.200".parse().unwrap()));
        assert!(s.admits("203.0.113.7".parse().unwrap()));
        assert!(!s.admits("203.0.113.8".parse().unwrap()));
        assert!(!s.admits("198.51.101.1".parse().unwrap()));

        let s = ok("service pub0 port * 443 TCP 192.168.77.10 8443 0x8000 hairpin");
        assert!(s.hairpin && s.from.is_empty());
        assert_eq!(s.flags, Flags(0x8000));

        // Either order after the flags, keywords in any case; the canonical form puts from
        // first. A one-port "range" is the port.
        let a = ok("service pub0 port * 443 TCP fd00::10 8443 HAIRPIN From 2001:db8::/32");
        let b = ok("service pub0 port * 443-443 TCP fd00::10 8443 from 2001:db8::/32 hairpin");
        assert_eq!(a, b);
        assert_eq!(
            a.to_string(),
            "service pub0 port * 443 TCP fd00::10 8443 0x0000 from 2001:db8::/32 hairpin"
        );
        assert!(a.admits("2001:db8:1::5".parse().unwrap()));
        assert!(!a.admits("2001:db9::5".parse().unwrap()));
        // Every plain line means what it meant.
        let plain = ok(BASE);
        assert_eq!(
            plain,
            Service::single(
                "eth0",
                AppAddr::Interface,
                80,
                Protocol::Tcp,
                "192.168.1.10".parse().unwrap(),
                8080,
                Flags(0)
            )
        );
        assert!(plain.admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bad_ranges() {
        // Columns: the apparent port word is at 21, the actual port word at 37.
        fails(
            "service eth0 port * 8009-8000 TCP 10.0.0.1 80",
            21,
            "is reversed: write the lower port first (8000-8009)",
        );
        fails(
            "service eth0 port * 65530-65540 TCP 10.0.0.1 80",
            21,
            "the range 65530-65540 goes past 65535",
        );
        fails(
            "service eth0 port * 65530-999999 TCP 10.0.0.1 80",
            21,
            "goes past 65535",
        );
        fails("service eth0 port * 0-9 TCP 10.0.0.1 80", 21, "first port");
        fails("service eth0 port * 1-x TCP 10.0.0.1 80", 21, "last port");
        fails("service eth0 port * 1- TCP 10.0.0.1 80", 21, "last port");
        fails("service eth0 port * 1-2-3 TCP 10.0.0.1 80", 21, "last port");
        fails(
            "service eth0 port * 1-02 TCP 10.0.0.1 80",
            21,
            "leading zeros",
        );
        let e = fails(
            "service eth0 port * 8000-8009 TCP 10.0.0.1 9000-9004",
            44,
            "the actual range 9000-9004 has 5 ports but the apparent range 8000-8009 (10 ports)",
        );
        assert_eq!(e.field, Field::ActPort);
        fails(
            "service eth0 port * 80 TCP 10.0.0.1 9000-9004",
            37,
            "the one apparent port 80",
        );
        fails(
            "service eth0 port * 80 TCP 10.0.0.1 9000-8000",
            37,
            "reversed",
        );
        // The full range onto the full range is fine.
        let s = ok("service eth0 port * 1-65535 UDP 10.0.0.1 1-65535");
        assert_eq!(s.act_port_for(65535), Some(65535));
    }

    #[test]
    fn bad_server_lists() {
        // The actual address word starts at 28; an error names the item's own column.
        let e = fails(
            "service eth0 port * 80 TCP 10.0.0.1,fd00::1 80",
            37,
            "server fd00::1 is IPv6 but server 10.0.0.1 is IPv4",
        );
        assert_eq!(e.field, Field::ActAddr);
        fails(
            "service eth0 port 203.0.113.1 80 TCP 10.0.0.1,10.0.0.2,fd00::1 80",
            56,
            "is IPv6",
        );
        fails(
            "service eth0 port * 80 TCP 10.0.0.1,10.0.0.2,10.0.0.1 80",
            46,
            "server 10.0.0.1 is listed twice",
        );
        fails(
            "service eth0 port * 80 TCP 10.0.0.1,,10.0.0.2 80",
            37,
            "empty server",
        );
        fails(
            "service eth0 port * 80 TCP 10.0.0.1, 80",
            37,
            "empty server",
        );
        fails(
            "service eth0 port * 80 TCP 10.0.0.1,224.0.0.1 80",
            37,
            "multicast",
        );
        fails(
            "service eth0 port * 80 TCP 10.0.0.1,* 80",
            37,
            "actual address, found \"*\"",
        );
        // Four servers at most; the fifth is named.
        ok("service eth0 port * 80 TCP 10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4 80");
        fails(
            "service eth0 port * 80 TCP 10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5 80",
            64,
            "server 10.0.0.5 is one too many: a service has at most 4 servers",
        );
        // On the command line the column is the word's number.
        let e = parse_service_words(&["eth0", "port", "*", "80", "TCP", "10.0.0.1,10.0.0.1", "80"])
            .unwrap_err();
        assert_eq!((e.column, e.field), (6, Field::ActAddr));
    }

    #[test]
    fn bad_from_lists() {
        const L: &str = "service eth0 port * 22 TCP 10.0.0.1 22";
        // "from" at 40, its list at 45.
        let e = fails(
            &format!("{L} from"),
            44,
            "missing field: the clients after \"from\"",
        );
        assert_eq!(e.field, Field::From);
        fails(&format!("{L} from ,10.1.0.0/16"), 45, "empty client");
        fails(&format!("{L} from 10.1.0.0/16,"), 57, "empty client");
        fails(
            &format!("{L} from 10.1.0.0/16,2001:db8::/32"),
            57,
            "client 2001:db8::/32 is IPv6 but the service is IPv4",
        );
        fails(
            &format!("{L} from 10.1.2.3/16"),
            45,
            "prefix 10.1.2.3/16 has bits set past its length /16: write 10.1.0.0/16",
        );
        fails(&format!("{L} from 10.1.0.0/33"), 45, "prefix length 0-32");
        fails(&format!("{L} from 10.1.0.0/"), 45, "prefix length 0-32");
        fails(&format!("{L} from 10.1.0.0/016"), 45, "prefix length 0-32");
        fails(&format!("{L} from 10.1.0.0/x"), 45, "prefix length");
        fails(
            &format!("{L} from 10.1.0"),
            45,
            "expected a client address or prefix",
        );
        fails(
            &format!("{L} from 10.0.0.0/8,10.0.0.0/8"),
            56,
            "client 10.0.0.0/8 is listed twice",
        );
        fails(&format!("{L} from ::ffff:10.0.0.1"), 45, "IPv4-mapped");
        fails(
            &format!("{L} from 10.0.0.0/8 from 10.0.0.0/8"),
            56,
            "\"from\" given twice",
        );
        fails(
            &format!("{L} hairpin hairpin"),
            48,
            "\"hairpin\" given twice",
        );
        // Flags come first: after the options they are trailing words.
        let e = fails(&format!("{L} hairpin 0x8000"), 48, "after the flags");
        assert_eq!(e.field, Field::Trailing);
        // The IPv6 service wants IPv6 clients; /0 is every client and stays accepted.
        fails(
            "service eth0 port * 22 TCP fd00::1 22 from 10.0.0.0/8",
            44,
            "is IPv4 but the service is IPv6",
        );
        assert_eq!(
            ok(&format!("{L} from 0.0.0.0/0")).to_string(),
            format!("{L} 0x0000 from 0.0.0.0/0")
        );
    }

    #[test]
    fn display_of_error() {
        let e = parse_service("service eth0 port * 80 TCP 10.0.0.1").unwrap_err();
        assert_eq!(e.to_string(), "column 36: missing field: actual port");
    }
}
