//! The crate's layers, checked: each folder of `src/` may use only the subsystems listed here
//! (by `crate::<name>` paths in its code). A new arrow is a decision: make it here, with the
//! reason, or keep the code where it belongs.
//!
//! The pure core (`config`, `wire`, and `engine`'s table and decisions) uses no kernel layer;
//! the kernel layers (`netlink`, `queue`, `iface`, `nft`) use nothing above them; only `daemon`
//! and the CLI see everything.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// (subsystem, what it may use). A subsystem is a folder `src/<name>/` or a file
/// `src/<name>.rs`.
const ALLOWED: &[(&str, &[&str])] = &[
    // Grammar, file, formatter: nothing but itself.
    ("config", &[]),
    // Packet rewrite: `config::Protocol` is the one type it shares with the grammar.
    ("wire", &["config"]),
    // Framing and sockets: the bottom layer.
    ("netlink", &[]),
    ("queue", &["netlink"]),
    // The interface snapshot implements the engine's `Interfaces` trait (the core defines
    // what it needs; the adapter supplies it).
    ("iface", &["netlink", "engine"]),
    ("nft", &["config", "netlink"]),
    ("log", &["config"]),
    // The per-packet path: decisions over the core, packets from the queue, records to log;
    // `iface::name_of` (if_indextoname) names the interface of a drop record for a packet of
    // no service (rate limited; the one kernel call the monitor makes).
    ("engine", &["config", "wire", "queue", "log", "iface"]),
    // Reports and the administrator's side of the socket.
    ("control", &["config", "engine", "queue", "log"]),
    (
        "daemon",
        &[
            "config", "wire", "engine", "netlink", "queue", "iface", "nft", "log", "control",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The subsystems named by `crate::<name>` in the code of `text`. Comment lines do not count:
/// a module's doc may name its users (netlink's says who speaks which protocol on it).
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

#[test]
fn every_subsystem_uses_only_what_it_may() {
    let known: BTreeSet<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
    let mut wrong = Vec::new();
    for (name, may) in ALLOWED {
        let mut files = Vec::new();
        let dir = src().join(name);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src().join(format!("{name}.rs")));
        }
        assert!(
            files.iter().all(|f| f.exists()),
            "src/{name} is listed in ALLOWED but is missing"
        );
        for f in &files {
            for used in uses(&fs::read_to_string(f).unwrap()) {
                if used != *name && !may.contains(&used.as_str()) {
                    wrong.push(format!(
                        "{} uses crate::{used}, which {name} may not",
                        f.strip_prefix(src()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));

    // Every subsystem of src/ is in the table, so none escapes the check.
    for e in fs::read_dir(src()).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        if matches!(stem.as_str(), "lib" | "main") {
            continue;
        }
        assert!(
            known.contains(stem.as_str()),
            "src/{stem} is not in tests/layout.rs's table"
        );
    }
}

#[test]
fn the_check_sees_an_arrow() {
    let found =
        uses("use crate::nft::Policy;\n/// see [`crate::queue`]\nlet x = crate::wire::f();");
    assert_eq!(
        found,
        ["nft", "wire"].iter().map(|s| s.to_string()).collect()
    );
}
