//! `parse(format(s)) == s` over random valid services, and a few properties of the grammar on
//! arbitrary input (it never panics; every error points inside or just past the line).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netnat::config::{
    AppAddr, Flags, Protocol, Service, parse_config, parse_service, parse_service_words,
};
use proptest::prelude::*;

/// Interface names the kernel accepts and the file can hold: 1-15 bytes of printable ASCII
/// without `/`, `:` or space, not `.`/`..`, without `#` (it starts a comment anywhere).
fn iface() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.@+=-]{1,15}".prop_filter("kernel rules", |s| s != "." && s != "..")
}

fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>()
        .prop_map(Ipv4Addr::from)
        .prop_filter("unicast", |a| {
            !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()
        })
}

/// IPv6 addresses with runs of zero groups, so that `::` compression lands everywhere.
fn unicast_v6() -> impl Strategy<Value = Ipv6Addr> {
    prop::array::uniform8(prop_oneof![Just(0u16), Just(1u16), any::<u16>()])
        .prop_map(Ipv6Addr::from)
        .prop_filter("unicast", |a| {
            !a.is_unspecified() && !a.is_multicast() && a.to_ipv4_mapped().is_none()
        })
}

fn flags() -> impl Strategy<Value = Flags> {
    any::<u16>().prop_map(|b| Flags(b & Flags::KNOWN))
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![1u16..=1024, 1u16..=65535, Just(65535u16)]
}

fn service() -> impl Strategy<Value = Service> {
    let v4 = (prop::option::of(unicast_v4()), unicast_v4()).prop_map(|(app, act)| {
        (
            app.map(|a| AppAddr::Fixed(IpAddr::V4(a)))
                .unwrap_or(AppAddr::Interface),
            IpAddr::V4(act),
        )
    });
    let v6 = (prop::option::of(unicast_v6()), unicast_v6()).prop_map(|(app, act)| {
        (
            app.map(|a| AppAddr::Fixed(IpAddr::V6(a)))
                .unwrap_or(AppAddr::Interface),
            IpAddr::V6(act),
        )
    });
    (
        iface(),
        prop_oneof![v4, v6],
        port(),
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        port(),
        flags(),
    )
        .prop_map(
            |(iface, (app_addr, act_addr), app_port, protocol, act_port, flags)| Service {
                iface,
                app_addr,
                app_port,
                protocol,
                act_addr,
                act_port,
                flags,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn parse_of_format_is_identity(s in service()) {
        let text = s.to_string();
        prop_assert_eq!(parse_service(&text), Ok(s.clone()), "{}", text);
        // Formatting is canonical: a second round gives the same text.
        prop_assert_eq!(parse_service(&text).unwrap().to_string(), text.clone());
        // The CLI form of the same words means the same service.
        let words: Vec<&str> = text.split(' ').collect();
        prop_assert_eq!(parse_service_words(&words), Ok(s.clone()));
        prop_assert_eq!(parse_service_words(&words[1..]), Ok(s));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// What the formatter writes is a valid configuration file line, with a trailing comment.
    #[test]
    fn formatted_services_load_from_a_file(s in service()) {
        let text = format!("# generated\n{s}   # note\n");
        let c = parse_config(&text, "p.conf").map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(c.services.len(), 1);
        prop_assert_eq!(c.services[0].line, 2);
        prop_assert_eq!(&c.services[0].service, &s);
    }

    /// Arbitrary text never panics, and an error's column is within the line or one past it.
    #[test]
    fn arbitrary_lines_never_panic(line in "\\PC{0,80}") {
        if let Err(e) = parse_service(&line) {
            prop_assert!(e.column >= 1 && e.column <= line.chars().count() + 1, "{:?} {:?}", line, e);
        }
    }

    /// Near-misses: a valid line with one word (after the interface) replaced by junk is
    /// refused at that word.
    #[test]
    fn one_bad_word_is_located(s in service(), which in 2usize..9, junk in "[a-z%]{1,3}") {
        let text = s.to_string();
        let mut words: Vec<String> = text.split(' ').map(str::to_owned).collect();
        // Junk that happens to be valid in that place: the keyword, a protocol, hex flags.
        prop_assume!(junk != "port" && junk != "tcp" && junk != "udp");
        prop_assume!(which != 8 || junk.chars().any(|c| !c.is_ascii_hexdigit()));
        words[which] = junk;
        let line = words.join(" ");
        let column = words[..which].iter().map(|w| w.chars().count() + 1).sum::<usize>() + 1;
        let e = parse_service(&line).unwrap_err();
        prop_assert_eq!(e.column, column, "{}: {}", line, e.message);
    }
}
