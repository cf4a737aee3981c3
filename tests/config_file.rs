//! The configuration file through the public API: directives, comments, located errors,
//! cross-line checks, and loading from disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use netnat::config::{
    AppAddr, Config, ConfigError, DEFAULT_MARK, DEFAULT_QUEUE, Flags, MAX_FILE_BYTES, Protocol,
    load_config, parse_config, parse_service,
};

fn ok(text: &str) -> Config {
    match parse_config(text, "t.conf") {
        Ok(c) => c,
        Err(errors) => panic!("unexpected errors:\n{}", lines(&errors)),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    parse_config(text, "t.conf").expect_err("the configuration should be refused")
}

fn lines(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("{e}\n")).collect()
}

/// The only error of `text`, checked for its location and a piece of its message.
fn one_error(text: &str, line: usize, column: usize, needle: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", lines(&errs));
    let e = errs.into_iter().next().unwrap();
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert!(e.message.contains(needle), "{e} lacks {needle:?}");
    e
}

const SEED: &str = "\
# The seed's three examples.
service ppp0 port * 80 TCP 192.168.1.10 8080 0x8000
service en0 port 203.0.113.5 53 udp 192.168.1.53 53

service tr0 port * 25 TCP 10.0.0.25 25 c000   # mail, logged
";

#[test]
fn seed_examples_with_comments_and_blank_lines() {
    let c = ok(SEED);
    assert_eq!(c.services.len(), 3);
    let got: Vec<(usize, String)> = c
        .services
        .iter()
        .map(|s| (s.line, s.service.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                2,
                "service ppp0 port * 80 TCP 192.168.1.10 8080 0x8000".to_string()
            ),
            (
                3,
                "service en0 port 203.0.113.5 53 UDP 192.168.1.53 53 0x0000".to_string()
            ),
            (
                5,
                "service tr0 port * 25 TCP 10.0.0.25 25 0xc000".to_string()
            ),
        ]
    );
    assert_eq!(c.services[2].service.flags, Flags(0xc000));
    assert_eq!(c.settings, Default::default());
    assert_eq!(c.settings.queue, DEFAULT_QUEUE);
    assert_eq!(c.settings.mark, DEFAULT_MARK);
}

#[test]
fn empty_and_comment_only_files() {
    assert_eq!(ok(""), Config::default());
    assert_eq!(
        ok("\n\n   \n\t\n# nothing\n   # indented comment\n"),
        Config::default()
    );
}

/// netnat.conf(5): `#` starts a comment that runs to the end of the line, wherever it is.
#[test]
fn hash_anywhere_starts_a_comment() {
    let c = ok("service eth0 port * 81 TCP 192.168.77.10 8081#web\n");
    assert_eq!(c.services[0].service.act_port, 8081);
    assert_eq!(c.services[0].service.flags, Flags(0));
    let c = ok("service eth0 port * 80 TCP 10.0.0.1 80 0x8000#web\nqueue 7#q\n");
    assert_eq!(c.services[0].service.flags, Flags(0x8000));
    assert_eq!(c.settings.queue, 7);
    // A `#` word right after the flags ends the line.
    let c = ok("service eth0 port * 80 TCP 10.0.0.1 80 0x8000 # web\n");
    assert_eq!(c.services[0].service.flags, Flags(0x8000));
    // Inside a word too: what follows it is no part of the service.
    one_error(
        "service eth#1 port * 80 TCP 10.0.0.1 80\n",
        1,
        12,
        "missing field",
    );
}

#[test]
fn crlf_line_endings() {
    let c = ok("queue 7\r\nservice eth0 port * 80 TCP 10.0.0.1 80 8000\r\n");
    assert_eq!(c.settings.queue, 7);
    assert_eq!(c.services[0].service.flags, Flags(0x8000));
}

#[test]
fn byte_order_mark_is_ignored() {
    let c = ok("\u{feff}queue 7\n");
    assert_eq!(c.settings.queue, 7);
    one_error("\u{feff}queue x\n", 1, 7, "found \"x\"");
    // Only at the very start of the file.
    one_error("queue 7\n\u{feff}mark 1\n", 2, 1, "unknown directive");
}

#[test]
fn settings() {
    let c = ok("queue 0\nmark 0x1\nsyslog-facility LOCAL7\nsyslog-priority warning\n");
    assert_eq!(c.settings.queue, 0);
    assert_eq!(c.settings.mark, 1);
    assert_eq!(c.settings.syslog_facility, "local7");
    assert_eq!(c.settings.syslog_priority, "warning");
    // Every bit for `mark` leaves none for header-only's `rewrite-mark`.
    let c = ok(
        "queue 65535\nmark ffffffff\nheader-only off\nsyslog-facility daemon\nsyslog-priority \
         debug\n",
    );
    assert_eq!(c.settings.queue, 65535);
    assert_eq!(c.settings.mark, 0xffff_ffff);
    assert_eq!(c.settings.syslog_facility, "daemon");
    let c = ok("mark 0X4E00\n");
    assert_eq!(c.settings.mark, 0x4e00);
}

#[test]
fn bad_settings() {
    one_error(
        "queue 65536\n",
        1,
        7,
        "expected a queue number 0-65535, found \"65536\"",
    );
    one_error("queue -1\n", 1, 7, "found \"-1\"");
    one_error("queue 01\n", 1, 7, "found \"01\"");
    one_error("queue\n", 1, 6, "missing field: queue number");
    one_error("queue 1 2\n", 1, 9, "unexpected \"2\"");
    one_error("mark 0\n", 1, 6, "must not be zero");
    one_error("mark 0x\n", 1, 6, "found \"0x\"");
    one_error("mark 123456789\n", 1, 6, "1-8 hex digits");
    one_error(
        "syslog-facility local8\n",
        1,
        17,
        "unknown syslog facility \"local8\"",
    );
    one_error(
        "syslog-priority warn\n",
        1,
        17,
        "unknown syslog priority \"warn\"",
    );
}

#[test]
fn settings_at_most_once() {
    let e = one_error("queue 1\n\nqueue 2\n", 3, 1, "already set on line 1");
    assert_eq!(
        e.to_string(),
        "t.conf:3:1: \"queue\" given twice: already set on line 1"
    );
    one_error("mark 1\nmark 2\n", 2, 1, "\"mark\" given twice");
    one_error(
        "syslog-facility kern\nsyslog-facility user\n",
        2,
        1,
        "given twice",
    );
    one_error(
        "syslog-priority info\nsyslog-priority err\n",
        2,
        1,
        "given twice",
    );
}

#[test]
fn unknown_directive_lists_the_known_ones() {
    let e = one_error("  servce eth0 port * 80 TCP 10.0.0.1 80\n", 1, 3, "");
    assert_eq!(
        e.message,
        "unknown directive \"servce\" (known directives: service, queue, queues, busy-poll, \
         drain-idle, mark, header-only, rewrite-mark, offload, offload-flows, \
         syslog-facility, syslog-priority, log-rate, log-burst, metrics-listen)"
    );
}

#[test]
fn service_errors_are_located_in_the_file() {
    let e = one_error("\n\nservice eth0 port * http TCP 10.0.0.1 80\n", 3, 21, "");
    assert_eq!(
        e.to_string(),
        "t.conf:3:21: expected a port number 1-65535, found \"http\""
    );
    one_error(
        "service eth0 port * 80 TCP 10.0.0.1   # no port\n",
        1,
        36,
        "missing field: actual port",
    );
    one_error(
        "service eth0 port * 80 SCTP 10.0.0.1 80\n",
        1,
        24,
        "unknown protocol \"SCTP\"",
    );
    one_error(
        "service eth0 port * 80 TCP 10.0.0.1 80 0x8001\n",
        1,
        40,
        "unknown flag bits 0x0001",
    );
    one_error(
        "service eth0 port 10.0.0.5 80 TCP fd00::1 80\n",
        1,
        35,
        "same family",
    );
    one_error(
        "service eth0 port * 80 TCP 10.0.0.1 80 0 extra\n",
        1,
        42,
        "unexpected \"extra\"",
    );
    one_error(
        "service eth0 port * 0 TCP 10.0.0.1 80\n",
        1,
        21,
        "found \"0\"",
    );
    one_error(
        "service eth0 port * 65536 TCP 10.0.0.1 80\n",
        1,
        21,
        "found \"65536\"",
    );
    one_error(
        "service eth0 port 10.0.0.256 80 TCP 10.0.0.1 80\n",
        1,
        19,
        "apparent address",
    );
}

#[test]
fn all_errors_are_reported_and_nothing_is_loaded() {
    let text = "\
service eth0 port * 80 TCP 10.0.0.1 80
bogus
service eth0 port * 81 TCP 10.0.0.2 0
queue x
service eth0 port * 82 TCP 10.0.0.3 82
";
    let errs = errors(text);
    let at: Vec<(usize, usize)> = errs.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, vec![(2, 1), (3, 37), (4, 7)], "{}", lines(&errs));
    assert!(errs.iter().all(|e| e.file == "t.conf"));
}

#[test]
fn duplicate_apparent_endpoint_names_both_lines() {
    let text = "\
service eth0 port * 80 TCP 10.0.0.1 80
# filler
service eth0 port * 80 tcp 10.0.0.2 8080
";
    let e = one_error(
        text,
        3,
        19,
        "lines 1 and 3 both claim the apparent endpoint",
    );
    assert_eq!(
        e.message,
        "lines 1 and 3 both claim the apparent endpoint * (IPv4) 80 TCP on eth0"
    );
    // Same fixed address.
    one_error(
        "service eth0 port 203.0.113.5 53 UDP 10.0.0.1 53\nservice eth0 port 203.0.113.5 53 UDP 10.0.0.2 53\n",
        2,
        19,
        "lines 1 and 2 both claim the apparent endpoint 203.0.113.5 53 UDP on eth0",
    );
    // A third claimant is reported against the first line too.
    let errs = errors(
        "service eth0 port * 80 TCP 10.0.0.1 80\nservice eth0 port * 80 TCP 10.0.0.2 80\nservice eth0 port * 80 TCP 10.0.0.3 80\n",
    );
    assert_eq!(errs.len(), 2, "{}", lines(&errs));
    assert!(errs[1].message.starts_with("lines 1 and 3"), "{}", errs[1]);
}

#[test]
fn endpoints_that_differ_somewhere_are_not_duplicates() {
    ok("\
service eth0 port * 80 TCP 10.0.0.1 80
service eth1 port * 80 TCP 10.0.0.2 80
service eth0 port * 80 UDP 10.0.0.3 80
service eth0 port * 81 TCP 10.0.0.4 80
service eth0 port 203.0.113.5 80 TCP 10.0.0.5 80
service eth0 port * 80 TCP fd00::1 80
service eth0 port 2001:db8::1 80 TCP fd00::2 80
");
    // The same actual endpoint behind two interfaces: replies leave through different ones.
    ok("service eth0 port * 80 TCP 10.0.0.1 80\nservice eth1 port * 80 TCP 10.0.0.1 80\n");
    // Same actual address, other port or protocol.
    ok("service eth0 port * 80 TCP 10.0.0.1 80\nservice eth0 port * 81 TCP 10.0.0.1 81\n");
    ok("service eth0 port * 53 TCP 10.0.0.1 53\nservice eth0 port * 53 UDP 10.0.0.1 53\n");
}

#[test]
fn ambiguous_replies_name_both_lines() {
    let text = "\
service eth0 port * 80 TCP 192.168.1.10 8080
service eth0 port 203.0.113.5 8080 TCP 192.168.1.10 8080
";
    let e = one_error(text, 2, 40, "lines 1 and 2 both map to the actual endpoint");
    assert_eq!(
        e.message,
        "lines 1 and 2 both map to the actual endpoint 192.168.1.10 8080 TCP on eth0 \
         (from * 80 and 203.0.113.5 8080): replies from it could not be told apart, \
         since netnat translates each packet on its own"
    );
    // IPv6 too, and `*` v4 vs `*` v6 are distinct apparent endpoints.
    one_error(
        "service eth0 port * 80 TCP fd00::1 80\nservice eth0 port * 81 TCP fd00::1 80\n",
        2,
        28,
        "lines 1 and 2 both map to the actual endpoint fd00::1 80 TCP on eth0",
    );
}

#[test]
fn overlong_line_is_refused_with_its_location() {
    let long = format!("# {}\n", "x".repeat(5000));
    let e = one_error(&format!("queue 1\n{long}"), 2, 4097, "limit of 4096 bytes");
    assert!(e.message.contains("5002 bytes"), "{e}");
    // Exactly at the limit is fine.
    ok(&format!("#{}\n", "x".repeat(4095)));
}

#[test]
fn oversized_text_is_refused() {
    let big = "#".repeat(MAX_FILE_BYTES + 1);
    let e = one_error(&big, 0, 0, "16 MiB");
    assert_eq!(e.file, "t.conf");
}

#[test]
fn error_display_format() {
    let e = ConfigError {
        file: "/etc/netnat.conf".into(),
        line: 4,
        column: 9,
        field: None,
        conflict: None,
        message: "m".into(),
    };
    assert_eq!(e.to_string(), "/etc/netnat.conf:4:9: m");
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert_eq!(boxed.to_string(), "/etc/netnat.conf:4:9: m");
}

#[test]
fn file_services_equal_cli_services() {
    let c = ok("service eth0 port 2001:db8::5 443 tcp fd00::10 8443 0x4000\n");
    let s = parse_service("service eth0 port 2001:db8::5 443 TCP fd00::10 8443 4000").unwrap();
    assert_eq!(c.services[0].service, s);
    assert_eq!(s.app_addr, AppAddr::Fixed("2001:db8::5".parse().unwrap()));
    assert_eq!(s.protocol, Protocol::Tcp);
}

// ---- loading from disk ----

/// A scratch file removed on drop, named uniquely per process and test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(contents: &[u8]) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "netnat-config-test-{}-{}.conf",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn load_reads_a_file() {
    let f = Scratch::new(SEED.as_bytes());
    let c = load_config(&f.0).unwrap();
    assert_eq!(c, ok(SEED));
}

#[test]
fn load_names_the_file_in_errors() {
    let f = Scratch::new(b"# netnat\nqueue x\n");
    let errs = load_config(&f.0).unwrap_err();
    assert_eq!(errs.len(), 1);
    let shown = f.0.display().to_string();
    assert_eq!(
        errs[0].to_string(),
        format!("{shown}:2:7: expected a queue number 0-65535, found \"x\"")
    );
}

#[test]
fn load_missing_file() {
    let path = std::env::temp_dir().join(format!("netnat-no-such-{}.conf", std::process::id()));
    let errs = load_config(&path).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (0, 0));
    assert_eq!(errs[0].message, "cannot read: file not found");
    // No `:0:0:`: the file as a whole is the place.
    assert_eq!(
        errs[0].to_string(),
        format!("{}: cannot read: file not found", path.display())
    );
}

#[test]
fn load_directory() {
    let errs = load_config(&std::env::temp_dir()).unwrap_err();
    assert_eq!(errs[0].line, 0);
    assert!(errs[0].message.contains("directory"), "{}", errs[0]);
}

#[test]
fn load_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let f = Scratch::new(b"queue 1\n");
    std::fs::set_permissions(&f.0, std::fs::Permissions::from_mode(0o000)).unwrap();
    let path = f.0.clone();
    // Even as root the read must be denied: in a thread of its own, whose filesystem uid is
    // nobody's (setfsuid is per thread and drops CAP_DAC_OVERRIDE/READ_SEARCH with uid 0).
    let errs = std::thread::spawn(move || {
        // SAFETY: setfsuid only changes this thread's filesystem uid; the thread ends here.
        unsafe { libc::setfsuid(65534) };
        assert!(
            std::fs::read(&path).is_err(),
            "the file must be unreadable in this thread"
        );
        load_config(&path).unwrap_err()
    })
    .join()
    .unwrap();
    assert_eq!(
        errs[0].to_string(),
        format!("{}: cannot read: permission denied", f.0.display())
    );
}

#[test]
fn load_reports_each_non_utf8_line_and_checks_the_rest() {
    let f =
        Scratch::new(b"queue 1\n# caf\xe9\nservice eth0 port * 80 TCP 10.0.0.1 http\nmark \xff\n");
    let errs = load_config(&f.0).unwrap_err();
    let at: Vec<(usize, usize, &str)> = errs
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(
        at,
        vec![
            (2, 6, "the line is not valid UTF-8"),
            (3, 37, "expected a port number 1-65535, found \"http\""),
            (4, 6, "the line is not valid UTF-8"),
        ]
    );
}

#[test]
fn load_refuses_a_file_over_16_mib() {
    let f = Scratch::new(b"");
    let file = std::fs::OpenOptions::new().write(true).open(&f.0).unwrap();
    // Sparse: no 16 MiB written to the disk.
    file.set_len(MAX_FILE_BYTES as u64 + 1).unwrap();
    let errs = load_config(&f.0).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (0, 0));
    assert!(errs[0].message.contains("16 MiB"), "{}", errs[0]);
}

// ---------------------------------------------------------------------------------------------
// Flow offload (issue 12): `offload on|off` (default off, needs header-only on) and
// `offload-flows N` (default 65536). Written against the specification; the settings' field
// names are the implementation's, so these compare whole settings with the defaults.

#[test]
fn offload_directives_are_accepted() {
    let defaults = netnat::config::Settings::default();
    // The defaults spelled out change nothing.
    assert_eq!(ok("offload off\n").settings, defaults);
    assert_eq!(ok("offload-flows 65536\n").settings, defaults);
    assert_eq!(ok("OFFLOAD Off\n").settings, defaults);
    // Anything else does.
    let on = ok("offload on\n").settings;
    assert_ne!(on, defaults, "`offload on` changed no setting");
    assert_eq!(ok("header-only on\noffload ON\n").settings, on);
    assert_ne!(ok("offload-flows 1\n").settings, defaults);
    assert_ne!(
        ok("offload-flows 1\n").settings,
        ok("offload-flows 2\n").settings
    );
    let c = ok("offload on # fast path\noffload-flows 1000\n\
                service pub0 port * 80 TCP 192.168.77.10 8080 0x8000\n");
    assert_eq!(c.services.len(), 1);
}

#[test]
fn bad_offload_values_are_located() {
    use netnat::config::Field;
    let e = one_error("offload maybe\n", 1, 9, "maybe");
    assert_eq!(e.field, Some(Field::Setting("offload")), "{e}");
    assert!(e.to_string().starts_with("t.conf:1:9: "), "{e}");
    one_error("queue 7\noffload\n", 2, 8, "missing field");
    one_error("offload on off\n", 1, 12, "unexpected \"off\"");
    let e = one_error("offload-flows 0\n", 1, 15, "0");
    assert_eq!(e.field, Some(Field::Setting("offload-flows")), "{e}");
    one_error("offload-flows -1\n", 1, 15, "-1");
    one_error("offload-flows many\n", 1, 15, "many");
    one_error("offload-flows 99999999999999999999\n", 1, 15, "");
    one_error("offload on\noffload off\n", 2, 1, "given twice");
    one_error("offload-flows 1\noffload-flows 2\n", 2, 1, "given twice");
}

/// Offload needs header-only on: the two together are refused with one error, located at one
/// of the two lines (`offload`'s value or `header-only`'s) and naming the other one.
#[test]
fn offload_on_needs_header_only_on() {
    for (text, offload_line, header_only_line) in [
        ("header-only off\noffload on\n", 2, 1),
        ("offload on\n\nheader-only off\n", 1, 3),
    ] {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "expected one error, got:\n{}", lines(&errs));
        let e = &errs[0];
        let other = if e.line == offload_line {
            header_only_line
        } else {
            assert_eq!(e.line, header_only_line, "{text:?}: {e}");
            offload_line
        };
        assert!(e.column >= 1, "{text:?}: {e}");
        assert!(
            e.message.contains("header-only") && e.message.contains(&format!("line {other}")),
            "{text:?}: {e} does not name header-only and line {other}"
        );
    }
    // Offload off goes with anything.
    assert!(parse_config("header-only off\noffload off\n", "t.conf").is_ok());
}
