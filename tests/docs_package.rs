//! The Debian packaging, checked without building a package (scripts/package-check builds one):
//! every asset `[package.metadata.deb]` names exists, the files agree with each other about
//! paths, and the default configuration starts netnat with no services.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The lines of `[package.metadata.deb]` in Cargo.toml, up to the next table header.
fn deb_section() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "[package.metadata.deb]");
    assert!(
        lines.next().is_some(),
        "Cargo.toml has no [package.metadata.deb]"
    );
    // Table headers start at column 0; the asset arrays inside are indented.
    lines
        .take_while(|l| !l.starts_with('['))
        .map(str::to_string)
        .collect()
}

/// The double-quoted strings of a line (no escapes are used in these values).
fn quoted(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `key = "value"` in the section.
fn value(section: &[String], key: &str) -> Option<String> {
    section.iter().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| quoted(v).into_iter().next())?
    })
}

/// `assets = [ [src, dest, mode], ... ]` as (source, destination, mode), one asset a line.
fn assets() -> Vec<(String, String, String)> {
    let section = deb_section();
    let mut lines = section.iter().skip_while(|l| l.trim() != "assets = [");
    assert!(
        lines.next().is_some(),
        "no `assets = [` line in [package.metadata.deb]"
    );
    lines
        .take_while(|l| l.trim() != "]")
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let q = quoted(l);
            assert_eq!(q.len(), 3, "asset line is not [src, dest, mode]: {l}");
            (q[0].clone(), q[1].clone(), q[2].clone())
        })
        .collect()
}

/// Where an asset lands: a destination ending in `/` is a directory.
fn installed_path(src: &str, dest: &str) -> String {
    if dest.ends_with('/') {
        let name = Path::new(src).file_name().unwrap().to_str().unwrap();
        format!("/{dest}{name}")
    } else {
        format!("/{dest}")
    }
}

#[test]
fn every_asset_source_exists() {
    let assets = assets();
    assert!(assets.len() >= 5, "suspiciously few assets: {assets:?}");
    for (src, dest, mode) in &assets {
        assert!(
            u32::from_str_radix(mode, 8).is_ok() && mode.len() == 3,
            "{src}: mode {mode:?} is not octal"
        );
        assert!(
            !dest.starts_with('/'),
            "{src}: destination {dest} is absolute"
        );
        if let Some(built) = src.strip_prefix("target/release/") {
            // A build product: cargo-deb builds it. It must be this package's binary.
            let bin = Path::new(env!("CARGO_BIN_EXE_netnat"));
            assert_eq!(
                built,
                bin.file_name().unwrap(),
                "asset {src} is not a binary of this package"
            );
        } else {
            assert!(
                Path::new(src).is_file(),
                "asset source {src} does not exist"
            );
        }
    }
}

#[test]
fn assets_put_the_files_where_the_pages_and_the_unit_say() {
    let installed: Vec<(String, String, String)> = assets()
        .into_iter()
        .map(|(s, d, m)| {
            let path = installed_path(&s, &d);
            (s, path, m)
        })
        .collect();
    let find = |path: &str| {
        installed
            .iter()
            .find(|(_, p, _)| p == path)
            .unwrap_or_else(|| panic!("no asset installs {path}"))
    };
    assert_eq!(find("/usr/sbin/netnat").2, "755");
    assert_eq!(find("/usr/share/man/man8/netnat.8").0, "man/netnat.8");
    assert_eq!(
        find("/usr/share/man/man5/netnat.conf.5").0,
        "man/netnat.conf.5"
    );
    let conf = find("/etc/netnat/netnat.conf");
    assert_eq!(conf.0, "packaging/netnat.conf");

    // The unit runs the binary and reads the configuration at those paths.
    let unit = read("systemd/netnat.service");
    assert!(unit.contains("ExecStart=/usr/sbin/netnat run --config /etc/netnat/netnat.conf"));
    // The pages name the same paths.
    let man8 = read("man/netnat.8");
    assert!(man8.contains("Pa /etc/netnat/netnat.conf"));
    assert!(man8.contains("Pa /usr/lib/systemd/system/netnat.service"));
    assert!(read("man/netnat.conf.5").contains(".Pa /etc/netnat/netnat.conf"));
}

#[test]
fn the_default_configuration_is_a_conffile() {
    let section = deb_section();
    let conf_line = section
        .iter()
        .find(|l| l.trim_start().starts_with("conf-files"))
        .expect("conf-files in [package.metadata.deb]");
    assert_eq!(quoted(conf_line), ["/etc/netnat/netnat.conf"]);
}

#[test]
fn the_unit_is_packaged_but_neither_enabled_nor_started() {
    let section = deb_section();
    let scripts = value(&section, "maintainer-scripts").expect("maintainer-scripts");
    assert!(
        Path::new(&scripts).join("netnat.service").is_file(),
        "cargo-deb takes the unit from {scripts}netnat.service"
    );
    let units = section
        .iter()
        .find(|l| l.trim_start().starts_with("systemd-units"))
        .expect("systemd-units in [package.metadata.deb]");
    let compact: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        compact.contains("enable=false") && compact.contains("start=false"),
        "installing the package must not enable or start netnat: {units}"
    );
}

#[test]
fn the_package_depends_on_the_netlink_libraries() {
    // `$auto` lets dpkg-shlibdeps derive them from the binary (scripts/package-check verifies the
    // built package's Depends); otherwise they must be listed by hand. netnat links libnftnl
    // only (its netlink sockets are its own); libmnl comes with libnftnl11.
    let depends = value(&deb_section(), "depends").expect("depends");
    if depends.trim() != "$auto" {
        assert!(
            depends.contains("libnftnl11"),
            "depends lacks libnftnl11: {depends}"
        );
    }
}

#[test]
fn the_license_files_exist() {
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("license = \"MIT OR Apache-2.0\""));
    assert!(read("LICENSE-MIT").contains("Permission is hereby granted"));
    assert!(read("LICENSE-APACHE").contains("Apache License"));
}

#[test]
fn the_default_configuration_has_no_services_and_no_errors() {
    let config = netnat::config::load_config(Path::new("packaging/netnat.conf"))
        .unwrap_or_else(|errors| panic!("packaging/netnat.conf: {errors:?}"));
    assert!(config.services.is_empty());
    // Everything in it is commented out: the settings are the built-in defaults.
    let text = read("packaging/netnat.conf");
    for line in text.lines() {
        assert!(
            line.is_empty() || line.starts_with('#'),
            "packaging/netnat.conf must be all comments: {line}"
        );
    }
}

#[test]
fn the_commented_examples_of_the_default_configuration_are_valid() {
    // `#service ...`, `#queue ...` and the other directives commented out with a `#` right in
    // front must, uncommented, be a correct configuration: an administrator uncomments them.
    // (`#   service <int> ...` is prose and not meant to parse.)
    let text = read("packaging/netnat.conf");
    let mut uncommented = String::new();
    let mut directives = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('#')
            && netnat::config::DIRECTIVES
                .iter()
                .any(|d| rest.strip_prefix(d).is_some_and(|r| r.starts_with(' ')))
        {
            uncommented.push_str(rest);
            uncommented.push('\n');
            directives += 1;
        }
    }
    assert!(
        directives >= netnat::config::DIRECTIVES.len(),
        "packaging/netnat.conf should show every directive: {uncommented}"
    );
    let dir = std::env::temp_dir().join(format!("netnat-docs-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("uncommented.conf");
    std::fs::write(&path, &uncommented).unwrap();
    let result = netnat::config::load_config(&path);
    std::fs::remove_dir_all(&dir).ok();
    let config = result.unwrap_or_else(|e| panic!("uncommented examples:\n{uncommented}{e:?}"));
    assert!(!config.services.is_empty());
}

#[test]
fn check_finds_no_configuration_error_in_the_default() {
    // `check` also looks at the host (ip_forward, queue support, conntrack), which may fail on
    // a build machine with status 1; a configuration error would be status 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netnat"))
        .args(["check", "--config", "packaging/netnat.conf"])
        .output()
        .expect("run netnat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "netnat check: {stderr}");
    assert!(
        !stderr.contains("packaging/netnat.conf:"),
        "located errors in the packaged default: {stderr}"
    );
}
