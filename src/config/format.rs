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
    write!(f, "service {} port ", s.iface)?;
    match s.app_addr {
        AppAddr::Interface => f.write_str("*")?,
        AppAddr::Fixed(a) => write!(f, "{a}")?,
    }
    write!(
        f,
        " {} {} {} {} {:#06x}",
        s.app_port,
        s.protocol.name(),
        s.act_addr,
        s.act_port,
        s.flags.0
    )
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::config::{AppAddr, Flags, Protocol, Service};

    fn svc(app: AppAddr, act: &str, flags: u16) -> Service {
        Service {
            iface: "eth0".into(),
            app_addr: app,
            app_port: 80,
            protocol: Protocol::Tcp,
            act_addr: act.parse().unwrap(),
            act_port: 8080,
            flags: Flags(flags),
        }
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
