//! The daemon's change logic, as pure functions: what a reload, `service add` or `service del`
//! asks for, whether it may stand, what goes on draining, and the rules of a service set.
//!
//! Nothing here touches the kernel, a file or the clock: the caller ([`super::Daemon`]) passes
//! in the running set and the time, and installs what comes back. It may use the configuration
//! model (`crate::config`), the rules it maps to (`crate::nft::Policy`, data only) and the
//! control protocol's [`Response`], which carries a refusal back to the client as it is.

use crate::config::{self, Config, ConfigError, GivenService, Protocol, Service, ServiceLine};
use crate::config::{Settings, parse_config};
use crate::control::{Outcome, Response};
use crate::nft::Policy;
use crate::nft::offload::Offload;
use crate::nft::rewrite::Rewrite;

/// The rules `config` asks for, spread over `queues` queues: what `rules` prints and `run`
/// installs (plus the draining services, see [`policy_with`]).
/// Without a lookup table, the `*` services' reply map elements are left out (`netnat rules`).
pub fn policy_of(config: &Config, queues: u16) -> Policy {
    policy_with(config, &services_of(config), queues, &|_| Vec::new())
}

/// The rules for `services` (the configuration's and the draining ones, whose packets must
/// still reach the queue) with `config`'s settings. `reply_from(i)`: the addresses replies of
/// the `*` service `services[i]` leave from now (default, then slots), for the header-only
/// path's reply maps (see `engine::datapath::reply_slots`).
pub(super) fn policy_with(
    config: &Config,
    services: &[Service],
    queues: u16,
    reply_from: &dyn Fn(usize) -> Vec<std::net::IpAddr>,
) -> Policy {
    let s = &config.settings;
    let rewrite = s
        .header_only
        .then(|| Rewrite::new(services, reply_from, s.mark, s.rewrite_mark));
    let offload = s.offload.then_some(Offload {
        mark: s.mark,
        bit: s.rewrite_mark,
        flows: s.offload_flows,
    });
    Policy::new(services, s.queue)
        .with_queues(queues)
        .with_mark(s.mark)
        .with_rewrite(rewrite)
        .with_offload(offload)
}

/// The services of a configuration, without their line numbers.
pub fn services_of(config: &Config) -> Vec<Service> {
    lines_services(&config.services)
}

fn lines_services(lines: &[ServiceLine]) -> Vec<Service> {
    lines.iter().map(|l| l.service.clone()).collect()
}

/// The configuration's services, then the draining ones: the ids of the lookup table and of
/// the monitor's counters.
pub(super) fn all_services(config: &Config, draining: &[Drained]) -> Vec<Service> {
    let mut all = services_of(config);
    all.extend(draining.iter().map(|d| d.service.clone()));
    all
}

/// A service removed from the configuration (by a reload or `service del`) whose established
/// TCP connections are still translated, until none was seen for `drain-idle` seconds: what
/// kernel NAT does for its connections, without keeping per-connection state. It takes no new
/// connections (a SYN gets the router's own answer) and is forgotten when it has been idle
/// that long, or when the configuration has it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Drained {
    pub service: Service,
    /// Wall-clock second it was removed.
    pub since: u64,
}

/// Same endpoints (interface, apparent and actual endpoint, protocol): flags aside, the same
/// service.
pub(super) fn same_endpoints(a: &Service, b: &Service) -> bool {
    *a == Service {
        flags: a.flags,
        ..b.clone()
    }
}

/// The draining services after the running `old` configuration (with `draining`) is replaced
/// by `new` at wall-clock second `now`: the TCP services `new` no longer has (UDP has no
/// connections to finish), and those already draining that `new` does not have again. None
/// with `drain-idle 0`.
pub(super) fn next_draining(
    old: &Config,
    draining: &[Drained],
    new: &Config,
    now: u64,
) -> Vec<Drained> {
    if new.settings.drain_idle_secs == 0 {
        return Vec::new();
    }
    let configured = |s: &Service| new.services.iter().any(|l| same_endpoints(&l.service, s));
    let mut out: Vec<Drained> = draining
        .iter()
        .filter(|d| !configured(&d.service))
        .cloned()
        .collect();
    for l in &old.services {
        let s = &l.service;
        if s.protocol == Protocol::Tcp
            && !configured(s)
            && !out.iter().any(|d| same_endpoints(&d.service, s))
        {
            out.push(Drained {
                service: s.clone(),
                since: now,
            });
        }
    }
    out
}

/// A reload whose file has errors: every error as `file:line:column: message`, one a line.
pub(super) fn reload_refused(errors: &[ConfigError]) -> Response {
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    Response::err(Outcome::Config, lines.join("\n"))
}

/// What a running daemon cannot change without a restart: the queue number, and the number
/// of queues (`queues` bound, one thread each).
pub(super) fn restart_needed(running: &Settings, new: &Settings, queues: u16) -> Option<Response> {
    let why = if new.queue != running.queue {
        "changing the queue number needs a restart"
    } else if new.queue_count() != queues {
        "changing the number of queues needs a restart"
    } else if (new.header_only, new.rewrite_mark) != (running.header_only, running.rewrite_mark) {
        // The queues were bound with the copy range `header-only` asks for.
        "changing header-only or rewrite-mark needs a restart"
    } else if (new.offload, new.offload_flows) != (running.offload, running.offload_flows) {
        // The consumer threads were started with it; the flow sets are sized by it.
        "changing offload or offload-flows needs a restart"
    } else {
        return None;
    };
    Some(Response::err(Outcome::Config, why))
}

/// A service set after `service add` or `service del`, and the service added or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Edit {
    pub lines: Vec<ServiceLine>,
    pub service: Service,
}

/// `service add`: the running set plus one, checked like a configuration file.
pub(super) fn added(running: &[ServiceLine], words: &[String]) -> Result<Edit, Response> {
    let service = parse_words(words)?.service;
    let mut lines = running.to_vec();
    lines.push(ServiceLine {
        line: 0,
        service: service.clone(),
    });
    check_set(&lines_services(&lines))?;
    Ok(Edit { lines, service })
}

/// `service del`: the running set less the service equal to the words (flags compared only
/// when the words give them), checked like a configuration file.
pub(super) fn deleted(running: &[ServiceLine], words: &[String]) -> Result<Edit, Response> {
    let given = parse_words(words)?;
    let matches = |s: &Service| {
        if given.flags_given {
            *s == given.service
        } else {
            same_endpoints(s, &given.service)
        }
    };
    let Some(index) = running.iter().position(|l| matches(&l.service)) else {
        return Err(Response::err(
            Outcome::Config,
            format!("no running service matches: {}", describe(&given)),
        ));
    };
    let mut lines = running.to_vec();
    let service = lines.remove(index).service;
    check_set(&lines_services(&lines))?;
    Ok(Edit { lines, service })
}

/// The service words of a request, parsed by the same grammar as the file.
pub(super) fn parse_words(words: &[String]) -> Result<GivenService, Response> {
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    config::parse_given_words(&refs).map_err(|e| {
        let at = e
            .column
            .checked_sub(1)
            .and_then(|i| refs.get(i))
            .map_or(String::from("the end"), |w| format!("{w:?}"));
        Response::err(
            Outcome::Usage,
            format!("word {} ({at}): {}", e.column, e.message),
        )
    })
}

/// A service as the request asked for it: without the flags when it gave none.
pub(super) fn describe(given: &GivenService) -> String {
    let text = given.service.to_string();
    if given.flags_given {
        text
    } else {
        // The canonical form always ends with the flags; they were not part of the question.
        text.rsplit_once(' ')
            .map_or(text.clone(), |(rest, _)| rest.to_string())
    }
}

/// Checks a service set exactly as the configuration file would be checked (one service per
/// apparent endpoint, one apparent endpoint per actual endpoint, ...). Errors name the
/// services by their position in the running set, listed after the errors.
pub(super) fn check_set(services: &[Service]) -> Result<(), Response> {
    let text: String = services.iter().map(|s| format!("{s}\n")).collect();
    let Err(errors) = parse_config(&text, "service set") else {
        return Ok(());
    };
    let mut body = String::from("refused, nothing changed:\n");
    let mut mentioned = Vec::new();
    for e in &errors {
        body.push_str(&format!("  {}\n", e.message));
        mentioned.extend(e.lines());
    }
    mentioned.sort_unstable();
    mentioned.dedup();
    for n in mentioned {
        if let Some(s) = n.checked_sub(1).and_then(|i| services.get(i)) {
            let role = if n == services.len() {
                "new or last"
            } else {
                "running"
            };
            body.push_str(&format!("  line {n} ({role}): {s}\n"));
        }
    }
    Err(Response::err(Outcome::Config, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Flags, parse_service};

    fn config(lines: &[&str]) -> Config {
        Config {
            services: lines
                .iter()
                .enumerate()
                .map(|(i, l)| ServiceLine {
                    line: i + 1,
                    service: parse_service(l).unwrap(),
                })
                .collect(),
            settings: Default::default(),
        }
    }

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn service(line: &str) -> Service {
        parse_service(line).unwrap()
    }

    const WEB: &str = "service pub0 port * 80 TCP 192.168.77.10 8080";
    const DNS: &str = "service pub0 port * 53 UDP 192.168.77.10 53";
    const SSH: &str = "service pub0 port * 22 TCP 192.168.77.11 22";

    #[test]
    fn removed_tcp_services_drain_udp_ones_do_not() {
        let old = config(&[WEB, DNS, SSH]);
        let d = next_draining(&old, &[], &config(&[SSH]), 100);
        assert_eq!(
            d,
            [Drained {
                service: service(WEB),
                since: 100
            }]
        );
    }

    #[test]
    fn a_flags_change_is_not_a_removal_and_a_comeback_ends_the_drain() {
        let old = config(&[WEB, SSH]);
        let flagged = "service pub0 port * 80 TCP 192.168.77.10 8080 0x8000";
        assert!(next_draining(&old, &[], &config(&[flagged, SSH]), 5).is_empty());
        let draining = next_draining(&old, &[], &config(&[SSH]), 5);
        assert_eq!(draining.len(), 1);
        // Removed again later: the drain started at the first removal goes on, once.
        let again = next_draining(&config(&[SSH]), &draining, &config(&[]), 9);
        assert_eq!(again.len(), 2);
        assert_eq!(again[0], draining[0], "kept with its first removal time");
        // Configured again: no longer draining.
        assert!(next_draining(&config(&[SSH]), &draining, &config(&[WEB, SSH]), 9).is_empty());
    }

    #[test]
    fn drain_idle_zero_drains_nothing() {
        let old = config(&[WEB]);
        let mut new = config(&[]);
        new.settings.drain_idle_secs = 0;
        assert!(next_draining(&old, &[], &new, 1).is_empty());
    }

    #[test]
    fn a_changed_actual_server_drains_the_old_mapping() {
        let old = config(&[WEB]);
        let moved = "service pub0 port * 80 TCP 192.168.77.12 8080";
        let new = config(&[moved]);
        let d = next_draining(&old, &[], &new, 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].service, service(WEB));
        // The old mapping stays in the rules and the table, after the new one, for its replies
        // only (the table takes ids from the configuration's count on as draining).
        assert_eq!(all_services(&new, &d), [service(moved), service(WEB)]);
        let both = [service(moved), service(WEB)];
        let policy = policy_with(&new, &all_services(&new, &d), 1, &|_| Vec::new());
        let rewrite = Rewrite::new(&both, &|_| Vec::new(), config::DEFAULT_MARK, 0x100);
        let want = Policy::new(&both, config::DEFAULT_QUEUE)
            .with_queues(1)
            .with_mark(config::DEFAULT_MARK)
            .with_rewrite(Some(rewrite));
        assert_eq!(policy, want);
    }

    #[test]
    fn a_removed_udp_service_stops_at_once() {
        let old = config(&[DNS]);
        assert!(next_draining(&old, &[], &config(&[]), 1).is_empty());
        // Also when it was the only change beside a TCP removal.
        let d = next_draining(&config(&[DNS, WEB]), &[], &config(&[]), 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].service.protocol, Protocol::Tcp);
    }

    /// A reload is the file again: with a duplicate it is refused, naming both lines, and
    /// nothing drains because nothing is applied.
    #[test]
    fn reload_with_a_duplicate_is_refused_naming_both_lines() {
        let text = format!("{WEB}\n{SSH}\nservice pub0 port * 80 TCP 192.168.77.99 80\n");
        let errors = parse_config(&text, "/etc/netnat/netnat.conf").unwrap_err();
        let r = reload_refused(&errors);
        assert_eq!(r.outcome, Outcome::Config);
        assert!(
            r.body
                .starts_with("/etc/netnat/netnat.conf:3:19: lines 1 and 3 both claim"),
            "{}",
            r.body
        );
        assert_eq!(errors[0].lines(), [1, 3]);
    }

    /// Services equal to running ones carry over a reload: not drained, same place in the
    /// set; a flags change is the same service too.
    #[test]
    fn equal_services_carry_over_a_reload() {
        let old = config(&[WEB, SSH]);
        let new = config(&[SSH, "service pub0 port * 80 TCP 192.168.77.10 8080 0xc000"]);
        assert!(next_draining(&old, &[], &new, 3).is_empty());
        assert!(same_endpoints(&new.services[1].service, &service(WEB)));
        assert!(!same_endpoints(&service(SSH), &service(WEB)));
        assert!(check_set(&services_of(&new)).is_ok());
        assert!(restart_needed(&old.settings, &new.settings, old.settings.queue_count()).is_none());
    }

    #[test]
    fn queue_changes_need_a_restart() {
        let running = Settings::default();
        let n = running.queue_count();
        let moved = Settings {
            queue: 7,
            ..Settings::default()
        };
        let r = restart_needed(&running, &moved, n).unwrap();
        assert_eq!(
            (r.outcome, r.body.as_str()),
            (Outcome::Config, "changing the queue number needs a restart")
        );
        let more = Settings {
            queues: Some(n + 1),
            ..Settings::default()
        };
        let r = restart_needed(&running, &more, n).unwrap();
        assert_eq!(r.body, "changing the number of queues needs a restart");
        // The queues were bound with header-only's copy range; the threads keep its bit.
        for other in [
            Settings {
                header_only: false,
                ..Settings::default()
            },
            Settings {
                rewrite_mark: 0x200,
                ..Settings::default()
            },
        ] {
            let r = restart_needed(&running, &other, n).unwrap();
            assert_eq!(
                r.body,
                "changing header-only or rewrite-mark needs a restart"
            );
        }
    }

    #[test]
    fn add_appends_the_service() {
        let running = config(&[WEB]).services;
        let e = added(&running, &words(SSH)).unwrap();
        assert_eq!(e.service, service(SSH));
        assert_eq!(lines_services(&e.lines), [service(WEB), service(SSH)]);
        assert_eq!(e.lines[1].line, 0, "not from a file");
        // The words without the keyword mean the same.
        let e2 = added(&running, &words(SSH)[1..]).unwrap();
        assert_eq!(e2, e);
    }

    #[test]
    fn add_of_a_duplicate_is_refused_with_the_clashing_line() {
        let running = config(&[WEB, SSH]).services;
        let r = added(&running, &words("pub0 port * 80 TCP 192.168.77.50 80")).unwrap_err();
        assert_eq!(r.outcome, Outcome::Config);
        let body: Vec<&str> = r.body.lines().collect();
        assert_eq!(body[0], "refused, nothing changed:");
        assert!(
            body[1].starts_with("  lines 1 and 3 both claim"),
            "{}",
            r.body
        );
        assert_eq!(
            &body[2..],
            [
                format!("  line 1 (running): {}", service(WEB)),
                format!(
                    "  line 3 (new or last): {}",
                    service("service pub0 port * 80 TCP 192.168.77.50 80")
                ),
            ]
        );
        // The same actual server behind a second apparent endpoint: named the same way.
        let r = added(&running, &words("pub0 port * 81 TCP 192.168.77.10 8080")).unwrap_err();
        assert!(
            r.body.contains("both map to the actual endpoint"),
            "{}",
            r.body
        );
        assert!(r.body.contains("  line 1 (running): "), "{}", r.body);
    }

    #[test]
    fn add_with_bad_words_is_a_usage_error_at_the_word() {
        let r = added(&[], &words("pub0 port * http TCP 10.0.0.1 80")).unwrap_err();
        assert_eq!(r.outcome, Outcome::Usage);
        assert_eq!(
            r.body,
            "word 4 (\"http\"): expected a port number 1-65535, found \"http\""
        );
        let r = added(&[], &words("pub0 port * 80 TCP 10.0.0.1")).unwrap_err();
        assert_eq!(r.body, "word 7 (the end): missing field: actual port");
    }

    #[test]
    fn del_without_flags_matches_any_flags() {
        let flagged = "service pub0 port * 80 TCP 192.168.77.10 8080 0x8000";
        let running = config(&[flagged, SSH]).services;
        let e = deleted(&running, &words(WEB)).unwrap();
        assert_eq!(
            e.service,
            service(flagged),
            "the running one, with its flags"
        );
        assert_eq!(lines_services(&e.lines), [service(SSH)]);
    }

    #[test]
    fn del_with_flags_compares_them() {
        let flagged = "service pub0 port * 80 TCP 192.168.77.10 8080 0x8000";
        let running = config(&[flagged, SSH]).services;
        let e = deleted(&running, &words(flagged)).unwrap();
        assert_eq!(e.service.flags, Flags(0x8000));
        // Flags 0 given are flags: they do not match 0x8000.
        let r = deleted(&running, &words(&format!("{WEB} 0"))).unwrap_err();
        assert_eq!(r.outcome, Outcome::Config);
        assert_eq!(
            r.body,
            "no running service matches: service pub0 port * 80 TCP 192.168.77.10 8080 0x0000"
        );
    }

    #[test]
    fn del_of_a_missing_service_names_it_as_asked() {
        let running = config(&[SSH]).services;
        let r = deleted(&running, &words(WEB)).unwrap_err();
        assert_eq!(r.outcome, Outcome::Config);
        // No flags were given, so none are shown.
        assert_eq!(
            r.body,
            "no running service matches: service pub0 port * 80 TCP 192.168.77.10 8080"
        );
        assert_eq!(
            deleted(&[], &words("pub0 port")).unwrap_err().outcome,
            Outcome::Usage
        );
    }

    #[test]
    fn check_set_accepts_a_valid_set_and_names_lines_of_a_bad_one() {
        assert!(check_set(&[]).is_ok());
        assert!(check_set(&[service(WEB), service(DNS), service(SSH)]).is_ok());
        // Both claim the apparent endpoint *:80 TCP; the second is last.
        let other = service("service pub0 port * 80 TCP 192.168.77.20 80");
        let r = check_set(&[service(WEB), service(SSH), other.clone()]).unwrap_err();
        assert_eq!(r.outcome, Outcome::Config);
        assert!(
            r.body.ends_with(&format!(
                "  line 1 (running): {}\n  line 3 (new or last): {other}\n",
                service(WEB)
            )),
            "{}",
            r.body
        );
        assert!(!r.body.contains("line 2"), "{}", r.body);
    }

    #[test]
    fn policy_of_a_set() {
        let mut c = config(&[WEB, DNS]);
        c.settings.queue = 100;
        c.settings.mark = 0x10;
        let p = policy_of(&c, 2);
        let both = [service(WEB), service(DNS)];
        let rewrite = Rewrite::new(&both, &|_| Vec::new(), 0x10, config::DEFAULT_REWRITE_MARK);
        assert_eq!(
            p,
            Policy::new(&both, 100)
                .with_queues(2)
                .with_mark(0x10)
                .with_rewrite(Some(rewrite))
        );
        // header-only off: no rewrite maps or chains.
        c.settings.header_only = false;
        assert_eq!(policy_of(&c, 2).rewrite, None);
        assert_ne!(p, policy_of(&c, 1));
        assert_eq!(services_of(&c), [service(WEB), service(DNS)]);
    }
}
