//! The canonical text of a service, the inverse of the grammar:
//!
//! ```text
//! service eth0 port * 80 TCP 192.168.1.10 8080 0x8000
//! ```
//!
//! Keywords lower case, protocol upper case, addresses as `std` displays them (IPv6
//! compressed), flags always written as four hex digits so that columns line up in listings
//! and nobody wonders whether "no flags" meant zero. `parse_service(&s.to_string()) == Ok(s)`
//! holds for every valid service (checked by a property test in `tests/config_roundtrip.rs`).

use std::fmt;

use super::{AppAddr, Service};

pub(super) fn write_service(f: &mut fmt::Formatter<'_>, s: &Service) -> fmt::Result {
    write_endpoints(f, s)?;
    write!(f, " {:#06x}", s.flags.0)?;
    write_options(f, s)
}

/// The canonical text without the flags (what a request that gave none asked about).
pub(super) fn without_flags(s: &Service) -> String {
    struct Text<'a>(&'a Service);
    impl fmt::Display for Text<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_endpoints(f, self.0)?;
            write_options(f, self.0)
        }
    }
    Text(s).to_string()
}

/// Everything before the flags: interface, apparent endpoint, protocol, actual endpoint.
fn write_endpoints(f: &mut fmt::Formatter<'_>, s: &Service) -> fmt::Result {
    write!(f, "service {} port ", s.iface)?;
    match s.app_addr {
        AppAddr::Interface => f.write_str("*")?,
        AppAddr::Fixed(a) => write!(f, "{a}")?,
    }
    f.write_str(" ")?;
    write_ports(f, s.app_port, s.app_port_last)?;
    write!(f, " {} {}", s.protocol.name(), s.act_addr)?;
    for a in &s.more_act_addrs {
        write!(f, ",{a}")?;
    }
    f.write_str(" ")?;
    write_ports(f, s.act_port, s.act_port_last)
}

/// `first` alone, or `first-last`.
fn write_ports(f: &mut fmt::Formatter<'_>, first: u16, last: u16) -> fmt::Result {
    if first == last {
        write!(f, "{first}")
    } else {
        write!(f, "{first}-{last}")
    }
}

/// What follows the flags: ` from LIST`, ` hairpin`, in that order.
fn write_options(f: &mut fmt::Formatter<'_>, s: &Service) -> fmt::Result {
    if let Some((first, rest)) = s.from.split_first() {
        write!(f, " from {first}")?;
        for p in rest {
            write!(f, ",{p}")?;
        }
    }
    if s.hairpin {
        f.write_str(" hairpin")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::config::{AppAddr, Flags, Prefix, Protocol, Service};

    fn svc(app: AppAddr, act: &str, flags: u16) -> Service {
        Service::single(
            "eth0",
            app,
            80,
            Protocol::Tcp,
            act.parse().unwrap(),
            8080,
            Flags(flags),
        )
    }

    #[test]
    fn issue_13_forms_in_canonical_order() {
        let mut s = svc(AppAddr::Interface, "192.168.77.10", 0x8000);
        s.app_port_last = 89;
        s.act_port_last = 8089;
        s.more_act_addrs = vec!["192.168.77.11".parse().unwrap()];
        s.from = vec![
            Prefix {
                addr: "198.51.100.0".parse().unwrap(),
                len: 24,
            },
            Prefix {
                addr: "203.0.113.7".parse().unwrap(),
                len: 32,
            },
        ];
        s.hairpin = true;
        assert_eq!(
            s.to_string(),
            "service eth0 port * 80-89 TCP 192.168.77.10,192.168.77.11 8080-8089 0x8000 \
             from 198.51.100.0/24,203.0.113.7 hairpin"
        );
        assert_eq!(
            super::without_flags(&s),
            "service eth0 port * 80-89 TCP 192.168.77.10,192.168.77.11 8080-8089 \
             from 198.51.100.0/24,203.0.113.7 hairpin"
        );
        // Many to one: the actual port once.
        s.act_port_last = 8080;
        s.from.clear();
        s.hairpin = false;
        assert!(
            s.to_string()
                .ends_with(" 80-89 TCP 192.168.77.10,192.168.77.11 8080 0x8000")
        );
    }

    #[test]
    fn canonical_v4_wildcard() {
        let s = svc(AppAddr::Interface, "192.168.1.10", 0x8000);
        assert_eq!(
            s.to_string(),
            "service eth0 port * 80 TCP 192.168.1.10 8080 0x8000"
        );
    }

    #[test]
    fn flags_always_four_digits_lower_case() {
        assert!(
            svc(AppAddr::Interface, "10.0.0.1", 0)
                .to_string()
                .ends_with(" 0x0000")
        );
        assert!(
            svc(AppAddr::Interface, "10.0.0.1", 0xc000)
                .to_string()
                .ends_with(" 0xc000")
        );
        assert!(
            svc(AppAddr::Interface, "10.0.0.1", 0x0800)
                .to_string()
                .ends_with(" 0x0800")
        );
    }

    #[test]
    fn ipv6_compressed_udp_upper_case() {
        let app: IpAddr = "2001:db8:0:0:0:0:0:5".parse().unwrap();
        let mut s = svc(AppAddr::Fixed(app), "fd00:0:0:0:0:0:0:35", 0);
        s.protocol = Protocol::Udp;
        assert_eq!(
            s.to_string(),
            "service eth0 port 2001:db8::5 80 UDP fd00::35 8080 0x0000"
        );
    }
}
