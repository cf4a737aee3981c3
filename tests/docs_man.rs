//! The manual pages against the program they describe: netnat(8) names every command and option
//! the binary's own help prints (read from the real binary, not from a list kept here), and
//! netnat.conf(5) names every directive and flag bit the configuration parser knows. Both pages
//! pass `mandoc -T lint -W warning` and keep their lines within 80 columns.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const NETNAT_8: &str = "man/netnat.8";
const NETNAT_CONF_5: &str = "man/netnat.conf.5";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The binary's help, parsed generically.

/// One command reachable from `netnat`: its words (`["service", "add"]`), its options, and
/// whether it has subcommands of its own.
#[derive(Debug)]
struct CliCommand {
    path: Vec<String>,
    options: Vec<CliOption>,
    has_subcommands: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CliOption {
    long: Option<String>,
    short: Option<char>,
}

impl CliOption {
    fn name(&self) -> String {
        match (&self.short, &self.long) {
            (_, Some(l)) => format!("--{l}"),
            (Some(s), None) => format!("-{s}"),
            (None, None) => unreachable!(),
        }
    }
}

fn help_of(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_netnat"))
        .args(path)
        .arg("--help")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .output()
        .expect("run netnat --help");
    assert!(
        out.status.success(),
        "netnat {} --help failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The entry lines of a help section (`Commands:`, `Options:`) between the section's heading
/// and the next heading. clap indents entries by two spaces, and options that have no short
/// form by six (`      --log-stderr`); descriptions continue at deeper indents.
fn section_entries<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut entries = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            inside = line.trim_end() == heading;
            continue;
        }
        let rest = line.trim_start();
        let indent = line.len() - rest.len();
        if inside && !rest.is_empty() && (indent == 2 || (indent == 6 && rest.starts_with("--"))) {
            entries.push(rest);
        }
    }
    entries
}

/// `-c, --config <CONFIG>  Configuration file` → short `c`, long `config`. The option words end
/// where the description starts (two blanks) or with the line.
fn parse_option(entry: &str) -> CliOption {
    let words = entry.split("  ").next().unwrap_or("");
    let mut opt = CliOption {
        long: None,
        short: None,
    };
    for word in words.split([' ', ',']).filter(|w| !w.is_empty()) {
        if let Some(long) = word.strip_prefix("--") {
            let name: String = long
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            opt.long = Some(name);
        } else if let Some(short) = word.strip_prefix('-')
            && short.len() == 1
        {
            opt.short = short.chars().next();
        }
    }
    assert!(
        opt.long.is_some() || opt.short.is_some(),
        "cannot read an option from help line {entry:?}"
    );
    opt
}

/// Every command of the binary, found by walking `--help` from the top.
fn cli_commands() -> Vec<CliCommand> {
    let mut found = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        assert!(path.len() < 5, "runaway subcommand nesting: {path:?}");
        let help = help_of(&path);
        let subs: Vec<String> = section_entries(&help, "Commands:")
            .into_iter()
            .filter_map(|e| e.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(str::to_string)
            .collect();
        let options = section_entries(&help, "Options:")
            .into_iter()
            .map(parse_option)
            .filter(|o| !matches!(o.long.as_deref(), Some("help")))
            .collect();
        for sub in &subs {
            let mut p = path.clone();
            p.push(sub.clone());
            todo.push(p);
        }
        found.push(CliCommand {
            path,
            options,
            has_subcommands: !subs.is_empty(),
        });
    }
    assert!(
        found.len() > 1,
        "no subcommands found in `netnat --help`; did its format change?"
    );
    found
}

// ---------------------------------------------------------------------------------------------
// The mdoc source, read just enough.

/// A request line split into words (`.Op Fl c Ar file` → `Op`, `Fl`, `c`, `Ar`, `file`).
fn macro_words(line: &str) -> Option<Vec<&str>> {
    line.strip_prefix('.')
        .map(|rest| rest.split_whitespace().collect())
}

/// An mdoc macro name among a request line's words (`Op`, `Fl`, `Ar`, `Cm`, `Ns`, ...).
fn is_macro(word: &str) -> bool {
    let b = word.as_bytes();
    (2..=3).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b[1..].iter().all(|c| c.is_ascii_lowercase())
}

/// The arguments of every `Fl` on the lines: `Fl -config` → `--config`, `Fl c` → `-c`.
fn flags_in(lines: &[&str]) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for words in lines.iter().filter_map(|l| macro_words(l)) {
        let mut in_fl = false;
        for w in words {
            if is_macro(w) {
                in_fl = w == "Fl";
            } else if in_fl && w != "|" && w != "," {
                flags.insert(format!("-{w}"));
            }
        }
    }
    flags
}

/// The SYNOPSIS of netnat(8) as blocks, one per `.Nm` line: the command words after `.Cm`
/// (`service add`) and the block's lines.
fn synopsis_blocks(page: &str) -> Vec<(String, Vec<&str>)> {
    let mut blocks: Vec<(String, Vec<&str>)> = Vec::new();
    let mut inside = false;
    for line in page.lines() {
        if let Some(name) = line.strip_prefix(".Sh ") {
            inside = name == "SYNOPSIS";
            continue;
        }
        if !inside {
            continue;
        }
        if line == ".Nm" || line.starts_with(".Nm ") {
            blocks.push((String::new(), Vec::new()));
        }
        let Some((command, lines)) = blocks.last_mut() else {
            continue;
        };
        lines.push(line);
        if lines.len() == 2
            && let Some(words) = macro_words(line)
            && words.first() == Some(&"Cm")
        {
            *command = words[1..]
                .iter()
                .take_while(|w| !is_macro(w))
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    blocks
}

/// The words `.It Cm ...` introduces in the COMMANDS section (`service add`).
fn commands_section_items(page: &str) -> BTreeSet<String> {
    let mut items = BTreeSet::new();
    let mut inside = false;
    for line in page.lines() {
        if let Some(name) = line.strip_prefix(".Sh ") {
            inside = name == "COMMANDS";
            continue;
        }
        if inside && let Some(rest) = line.strip_prefix(".It Cm ") {
            let words: Vec<&str> = rest
                .split_whitespace()
                .take_while(|w| !is_macro(w))
                .collect();
            items.insert(words.join(" "));
        }
    }
    items
}

// ---------------------------------------------------------------------------------------------
// (a) lint

fn mandoc_lint(page: &str) {
    let out = match Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning", page])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "mandoc is not installed but CI is set: scripts/deps installs it"
            );
            eprintln!("mandoc not installed: lint of {page} NOT checked (CI would fail here)");
            return;
        }
        Err(e) => panic!("run mandoc: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // mandoc also complains about its own stale database of installed pages, which says nothing
    // about the page being checked.
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("outdated mandoc.db"))
        .collect();
    assert!(
        complaints.is_empty(),
        "mandoc -T lint -W warning {page}:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn netnat_8_passes_mandoc_lint() {
    mandoc_lint(NETNAT_8);
}

#[test]
fn netnat_conf_5_passes_mandoc_lint() {
    mandoc_lint(NETNAT_CONF_5);
}

#[test]
fn page_sources_fit_in_80_columns() {
    for page in [NETNAT_8, NETNAT_CONF_5] {
        for (n, line) in read(page).lines().enumerate() {
            assert!(
                line.chars().count() <= 80,
                "{page}:{}: {} columns: {line}",
                n + 1,
                line.chars().count()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) netnat(8) against the binary

#[test]
fn netnat_8_names_every_command_and_option_of_the_binary() {
    let page = read(NETNAT_8);
    let blocks = synopsis_blocks(&page);
    let items = commands_section_items(&page);
    let all_flags = flags_in(&page.lines().collect::<Vec<_>>());
    let mut missing = Vec::new();

    for cmd in cli_commands() {
        let words = cmd.path.join(" ");
        // Long options (and short ones) anywhere in the page, typically under OPTIONS.
        for opt in &cmd.options {
            if let Some(l) = &opt.long
                && !all_flags.contains(&format!("--{l}"))
            {
                missing.push(format!("option --{l} of `netnat {words}`: no `Fl -{l}`"));
            }
            if let Some(s) = opt.short
                && !all_flags.contains(&format!("-{s}"))
            {
                missing.push(format!("option -{s} of `netnat {words}`: no `Fl {s}`"));
            }
        }
        if cmd.path.is_empty() || cmd.has_subcommands {
            continue;
        }
        // Every command that does something has its SYNOPSIS line, which shows each of its
        // options (short or long form), and its entry under COMMANDS.
        match blocks.iter().find(|(c, _)| *c == words) {
            None => missing.push(format!("SYNOPSIS: no `.Nm` / `.Cm {words}` block")),
            Some((_, lines)) => {
                let shown = flags_in(lines);
                for opt in &cmd.options {
                    let long = opt.long.as_ref().map(|l| format!("--{l}"));
                    let short = opt.short.map(|s| format!("-{s}"));
                    let present = long.iter().chain(short.iter()).any(|f| shown.contains(f));
                    if !present {
                        missing.push(format!("SYNOPSIS of `netnat {words}` lacks {}", opt.name()));
                    }
                }
            }
        }
        if !items.contains(&words) {
            missing.push(format!("COMMANDS: no `.It Cm {words}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "netnat.8 does not describe the binary:\n  {}",
        missing.join("\n  ")
    );
}

/// The other direction: what netnat(8)'s SYNOPSIS promises, the binary accepts. This fails on a
/// branch where the page already describes commands the CLI does not have yet.
#[test]
fn netnat_8_synopsis_promises_nothing_the_binary_lacks() {
    let page = read(NETNAT_8);
    let commands = cli_commands();
    let mut extra = Vec::new();
    for (words, lines) in synopsis_blocks(&page) {
        if words.is_empty() {
            // `netnat --version`
            continue;
        }
        let Some(cmd) = commands.iter().find(|c| c.path.join(" ") == words) else {
            extra.push(format!("`netnat {words}` is not a command of the binary"));
            continue;
        };
        for flag in flags_in(&lines) {
            let known = cmd.options.iter().any(|o| {
                o.long.as_ref().is_some_and(|l| flag == format!("--{l}"))
                    || o.short.is_some_and(|s| flag == format!("-{s}"))
            });
            if !known {
                extra.push(format!("`netnat {words}` has no option {flag}"));
            }
        }
    }
    assert!(
        extra.is_empty(),
        "netnat.8 SYNOPSIS promises more than the binary has:\n  {}",
        extra.join("\n  ")
    );
}

#[test]
fn help_parser_reads_clap_output() {
    // The generic parser on a fixed sample of the format clap prints, so that a failure of the
    // test above is about the page and not about the parser.
    let sample = "About\n\nUsage: x <COMMAND>\n\nCommands:\n  run    Run it\n          \
                  continued\n  help   Print this message\n\nOptions:\n  -c, --config <CONFIG>  \
                  File [default: /x]\n      --log-stderr\n          Log\n  -h, --help  Help\n";
    let cmds: Vec<&str> = section_entries(sample, "Commands:")
        .iter()
        .filter_map(|e| e.split_whitespace().next())
        .collect();
    assert_eq!(cmds, ["run", "help"]);
    let opts: Vec<CliOption> = section_entries(sample, "Options:")
        .into_iter()
        .map(parse_option)
        .collect();
    assert_eq!(
        opts,
        [
            CliOption {
                long: Some("config".into()),
                short: Some('c')
            },
            CliOption {
                long: Some("log-stderr".into()),
                short: None
            },
            CliOption {
                long: Some("help".into()),
                short: Some('h')
            },
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// (c) netnat.conf(5) against the parser

#[test]
fn netnat_conf_5_describes_every_directive() {
    let page = read(NETNAT_CONF_5);
    let mut missing = Vec::new();
    for directive in netnat::config::DIRECTIVES {
        // Each directive is an `Ic` item of the DIRECTIVES list.
        let described = page
            .lines()
            .any(|l| macro_words(l).is_some_and(|w| w.windows(2).any(|p| p == ["Ic", directive])));
        if !described {
            missing.push(directive);
        }
    }
    assert!(
        missing.is_empty(),
        "netnat.conf.5 lacks `.Ic` entries for directives: {missing:?}"
    );
}

#[test]
fn netnat_conf_5_describes_every_flag_bit() {
    use netnat::config::Flags;
    let page = read(NETNAT_CONF_5);
    let items: BTreeSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix(".It "))
        .collect();
    let mut missing = Vec::new();
    for bit in 0..16 {
        let value = 1u16 << bit;
        if Flags::KNOWN & value != 0 {
            let name = format!("0x{value:04x}");
            if !items.contains(name.as_str()) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "netnat.conf.5 FLAGS lacks `.It` entries for bits {missing:?}"
    );
    // And no entry for a bit the parser refuses.
    for item in items.iter().filter(|i| i.starts_with("0x")) {
        let value = u16::from_str_radix(&item[2..], 16)
            .unwrap_or_else(|_| panic!("netnat.conf.5: flag item {item:?} is not hex"));
        assert!(
            Flags::KNOWN & value == value && value.count_ones() == 1,
            "netnat.conf.5 describes flag {item}, which the parser does not know"
        );
    }
}

#[test]
fn pages_refer_to_each_other() {
    let man8 = read(NETNAT_8);
    let man5 = read(NETNAT_CONF_5);
    assert!(man8.contains(".Xr netnat.conf 5"));
    assert!(man5.contains(".Xr netnat 8"));
    assert!(Path::new("systemd/netnat.service").exists());
    let unit = read("systemd/netnat.service");
    assert!(
        unit.contains("Documentation=man:netnat(8) man:netnat.conf(5)"),
        "the unit's Documentation= should name both pages"
    );
}
