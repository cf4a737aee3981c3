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

use std::net::IpAddr;

use super::{AppAddr, Flags, Protocol, Service};

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

    let w = next(Field::AppPort, "apparent port")?;
    let app_port = parse_port(w.text).map_err(|m| err(&w, Field::AppPort, m))?;

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
    let act_addr =
        parse_addr(act_word.text, "actual").map_err(|m| err(&act_word, Field::ActAddr, m))?;
    if let AppAddr::Fixed(app) = app_addr
        && app.is_ipv6() != act_addr.is_ipv6()
    {
        return Err(err(
            &act_word,
            Field::ActAddr,
            format!(
                "apparent address {app} is {} but actual address {act_addr} is {} \
                 (both must be of the same family)",
                family(app),
                family(act_addr)
            ),
        ));
    }

    let w = next(Field::ActPort, "actual port")?;
    let act_port = parse_port(w.text).map_err(|m| err(&w, Field::ActPort, m))?;

    let flags = match it.next() {
        None => None,
        Some(w) => Some(parse_flags(w.text).map_err(|m| err(w, Field::Flags, m))?),
    };

    if let Some(w) = it.next() {
        return Err(err(
            w,
            Field::Trailing,
            format!(
                "unexpected {:?} after the flags (nothing may follow them)",
                w.text
            ),
        ));
    }

    Ok(GivenService {
        service: Service {
            iface,
            app_addr,
            app_port,
            protocol,
            act_addr,
            act_port,
            flags: flags.unwrap_or_default(),
        },
        flags_given: flags.is_some(),
    })
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
            "unexpected \"extra\" after the flags (nothing may follow them)"
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

    #[test]
    fn display_of_error() {
        let e = parse_service("service eth0 port * 80 TCP 10.0.0.1").unwrap_err();
        assert_eq!(e.to_string(), "column 36: missing field: actual port");
    }
}
