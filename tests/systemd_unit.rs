//! The systemd unit as systemd itself judges it: `systemd-analyze verify` clean, a low
//! `systemd-analyze security` exposure, and the settings the daemon's life depends on.

use std::path::PathBuf;
use std::process::Command;

const UNIT: &str = include_str!("../systemd/netnat.service");

/// The unit with the installed binary's path replaced by the one cargo built, and the man pages
/// where `man` finds them, so that verify checks every reference for real.
fn staged() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("netnat-unit-{}", std::process::id()));
    for sec in ["man8", "man5"] {
        std::fs::create_dir_all(dir.join("man").join(sec)).unwrap();
    }
    std::fs::copy("man/netnat.8", dir.join("man/man8/netnat.8")).unwrap();
    std::fs::copy("man/netnat.conf.5", dir.join("man/man5/netnat.conf.5")).unwrap();
    let unit = dir.join("netnat.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/sbin/netnat", env!("CARGO_BIN_EXE_netnat")),
    )
    .unwrap();
    (unit, dir.join("man"))
}

fn analyze(args: &[&str], manpath: &std::path::Path) -> Option<std::process::Output> {
    match Command::new("systemd-analyze")
        .args(args)
        .env("MANPATH", manpath)
        .output()
    {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "systemd-analyze is missing in CI: {e}"
            );
            eprintln!("NOT RUN: systemd-analyze missing ({e})");
            None
        }
    }
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let (unit, man) = staged();
    let Some(out) = analyze(&["verify", unit.to_str().unwrap()], &man) else {
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "verify: {text}"
    );
}

#[test]
fn systemd_security_exposure_is_low() {
    let (unit, man) = staged();
    let Some(out) = analyze(&["security", "--offline=yes", unit.to_str().unwrap()], &man) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for netnat.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(
        level <= 2.5,
        "exposure {level} is higher than the unit's 1.9 of today"
    );
}

#[test]
fn the_unit_says_what_the_daemon_needs() {
    let lines: Vec<&str> = UNIT.lines().map(str::trim).collect();
    for want in [
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/sbin/netnat run --config /etc/netnat/netnat.conf",
    ] {
        assert!(lines.contains(&want), "unit lacks `{want}`");
    }
    let after = lines
        .iter()
        .find(|l| l.starts_with("After="))
        .expect("After=");
    assert!(after.contains("network-online.target"), "{after}");
}
