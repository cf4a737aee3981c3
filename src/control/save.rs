//! `service add/del --save`: the daemon edits its own configuration file so that the change
//! survives a restart, without disturbing anything else in it.
//!
//! - `add` appends the service's canonical line at the end of the file, with the file's own
//!   line ending (that of its last line: a CRLF file stays CRLF).
//! - `del` comments out every line that declares the deleted service (equal after parsing, so
//!   spelling, spacing and case do not matter), prefixing it with [`DELETED_PREFIX`]: the
//!   original text, trailing comment included, stays in the file and is easy to restore.
//! - Every other byte stays as it was: comments, blank lines, other directives, line endings.
//! - The new text must load as a configuration (same checks as `netnat check`), or nothing is
//!   written.
//! - The file is replaced atomically: written to a temporary file in the same directory,
//!   flushed, given the old file's mode and owner, then renamed over it. A symbolic link is
//!   followed: its target is replaced, the link stays.

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError, Service};

/// What a line deleted by `service del --save` starts with.
pub const DELETED_PREFIX: &str = "# deleted by netnat service del: ";

/// The file with `service` appended as its last line.
pub fn with_added(text: &str, service: &Service) -> String {
    let eol = line_ending(text);
    let mut out = String::with_capacity(text.len() + 80);
    out.push_str(text);
    if !text.is_empty() && !text.ends_with('\n') {
        out.push_str(eol);
    }
    out.push_str(&service.to_string());
    out.push_str(eol);
    out
}

/// The line ending of the file's last ended line; `\n` for a file without any. An editor
/// that writes CRLF would otherwise meet a file with mixed endings after a save.
fn line_ending(text: &str) -> &'static str {
    match text.rfind('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    }
}

/// The file with every line that declares `service` commented out, and how many there were.
pub fn with_deleted(text: &str, service: &Service) -> (String, usize) {
    let mut out = String::with_capacity(text.len() + 40);
    let mut count = 0;
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if declares(line, service) {
            out.push_str(DELETED_PREFIX);
            count += 1;
        }
        out.push_str(line);
    }
    (out, count)
}

/// Whether one line of the file is a `service` line equal to `service`.
fn declares(line: &str, service: &Service) -> bool {
    let line = line.strip_suffix('\r').unwrap_or(line);
    // A `#` anywhere starts a comment, as in the configuration file.
    let code = line.split('#').next().unwrap_or("");
    let first = code.split_whitespace().next().unwrap_or("");
    first.eq_ignore_ascii_case("service")
        && config::parse_service(code).is_ok_and(|s| &s == service)
}

/// Why the file could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The edited text would not load.
    #[error("the configuration file would not load after the change:{}", listed(.0))]
    Invalid(Vec<ConfigError>),
    /// The file may be changed by users other than its owner: netnat does not edit it.
    #[error("{0}")]
    Unsafe(String),
    /// Reading or replacing the file failed; `context` says what was done, to which file.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn listed(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> SaveError {
    move |source| SaveError::Io { context, source }
}

/// Reads the file as text (the target of a symbolic link), with its real path.
pub fn read(path: &Path) -> Result<(PathBuf, String), SaveError> {
    let real = std::fs::canonicalize(path).map_err(io_error(path.display().to_string()))?;
    // The same refusal as loading: never edit a file that others may change behind netnat.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&real)
            .map_err(io_error(real.display().to_string()))?
            .permissions(),
    );
    config::check_not_writable_by_others(path, mode).map_err(SaveError::Unsafe)?;
    let text =
        std::fs::read_to_string(&real).map_err(io_error(format!("reading {}", real.display())))?;
    Ok((real, text))
}

/// Checks that `text` loads as a configuration, reporting errors against `path`.
pub fn check(path: &Path, text: &str) -> Result<(), SaveError> {
    config::parse_config(text, &path.display().to_string())
        .map(|_| ())
        .map_err(SaveError::Invalid)
}

/// Replaces the file at `real` (a path without symbolic links) with `text` atomically,
/// keeping its mode and owner.
pub fn write_atomic(real: &Path, text: &str) -> Result<(), SaveError> {
    let err = |what: &str, source: io::Error| SaveError::Io {
        context: format!("{what} {}", real.display()),
        source,
    };
    let meta = std::fs::metadata(real).map_err(|e| err("reading", e))?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "netnat.conf".into());
    let tmp = dir.join(format!(".{name}.netnat-save.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("creating a temporary file beside", e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err("writing a temporary file beside", e))?;
        // Owner first: chown clears set-id bits, the mode set after it is the old one.
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| err("keeping the owner of", e))?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| err("keeping the mode of", e))?;
        f.sync_all().map_err(|e| err("flushing", e))?;
        std::fs::rename(&tmp, real).map_err(|e| err("replacing", e))?;
        // The rename itself is durable once the directory is flushed; best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_world_writable_file_is_not_edited() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("netnat-save-ww-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("netnat.conf");
        std::fs::write(&file, "queue 1\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read(&file).unwrap_err().to_string();
        assert!(err.contains("world-writable"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&file).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;
    use crate::config::parse_service;

    const FILE: &str = "# netnat at the edge\n\
                        queue 4747\n\
                        \n\
                        service pub0 port * 80 TCP 192.168.77.10 8080 0x8000   # web\r\n\
                        SERVICE  pub0 port *  53  udp 192.168.77.10 5353 # dns, odd spelling\n\
                        syslog-facility local2\n";

    fn svc(line: &str) -> Service {
        parse_service(line).unwrap()
    }

    #[test]
    fn io_errors_keep_their_source() {
        use std::error::Error;
        let missing = std::env::temp_dir().join(format!("netnat-save-none-{}", std::process::id()));
        let e = write_atomic(&missing, "queue 1\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("reading {}: ", missing.display())),
            "{e}"
        );
        let io = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::NotFound));
        let e = check(Path::new("f.conf"), "queue x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the configuration file would not load after the change:\n  \
             f.conf:1:7: expected a queue number 0-65535, found \"x\""
        );
    }

    #[test]
    fn add_appends_the_canonical_line_and_keeps_everything_else() {
        let s = svc("service pub0 port * 81 tcp 192.168.77.10 8081 8000");
        let out = with_added(FILE, &s);
        assert_eq!(
            out,
            format!("{FILE}service pub0 port * 81 TCP 192.168.77.10 8081 0x8000\n")
        );
        assert_eq!(
            with_added("queue 1", &s),
            "queue 1\nservice pub0 port * 81 TCP 192.168.77.10 8081 0x8000\n"
        );
        assert_eq!(
            with_added("", &s),
            "service pub0 port * 81 TCP 192.168.77.10 8081 0x8000\n"
        );
    }

    /// Issue 13's forms go into the file in their canonical form and come out of it by
    /// meaning, whatever the spelling of the line.
    #[test]
    fn add_and_del_keep_the_issue_13_forms() {
        let s = svc(
            "service pub0 port * 8000-8009 tcp 192.168.77.10,192.168.77.11 9000-9009 \
                     hairpin FROM 198.51.100.0/24,203.0.113.7",
        );
        let line = "service pub0 port * 8000-8009 TCP 192.168.77.10,192.168.77.11 9000-9009 \
                    0x0000 from 198.51.100.0/24,203.0.113.7 hairpin";
        let out = with_added(FILE, &s);
        assert_eq!(out, format!("{FILE}{line}\n"));
        assert_eq!(svc(line), s);
        let odd = "service  pub0 port * 8000-8009 TCP 192.168.77.10,192.168.77.11 9000-9009 0 \
                   hairpin from 198.51.100.0/24,203.0.113.7 # edge";
        let (text, n) = with_deleted(&format!("{FILE}{odd}\n"), &s);
        assert_eq!(n, 1);
        assert!(
            text.ends_with(&format!("{DELETED_PREFIX}{odd}\n")),
            "{text}"
        );
        // Another from list is another service: left alone.
        let (_, n) = with_deleted(
            &format!("{FILE}{odd}\n"),
            &svc(&line.replace(",203.0.113.7", "")),
        );
        assert_eq!(n, 0);
    }

    #[test]
    fn add_to_a_crlf_file_keeps_crlf() {
        let s = svc("service pub0 port * 81 TCP 192.168.77.10 8081");
        let line = "service pub0 port * 81 TCP 192.168.77.10 8081 0x0000";
        let crlf = "# edited elsewhere\r\nqueue 4747\r\n";
        assert_eq!(with_added(crlf, &s), format!("{crlf}{line}\r\n"));
        // An unended last line gets the file's ending too.
        assert_eq!(
            with_added("queue 1\r\nqueue 2", &s),
            format!("queue 1\r\nqueue 2\r\n{line}\r\n")
        );
        let out = with_added(crlf, &s);
        assert_eq!(out.matches('\n').count(), out.matches("\r\n").count());
        assert_eq!(config::parse_config(&out, "t").unwrap().services.len(), 1);
    }

    #[test]
    fn del_finds_a_line_whose_comment_follows_a_value_directly() {
        let web = svc("service pub0 port * 81 TCP 192.168.77.10 8081");
        let text = "service pub0 port * 81 TCP 192.168.77.10 8081#web\n";
        let (out, n) = with_deleted(text, &web);
        assert_eq!(n, 1);
        assert_eq!(out, format!("{DELETED_PREFIX}{text}"));
    }

    #[test]
    fn del_comments_out_the_equal_line_only() {
        let dns = svc("service pub0 port * 53 UDP 192.168.77.10 5353");
        let (out, n) = with_deleted(FILE, &dns);
        assert_eq!(n, 1);
        assert_eq!(
            out,
            FILE.replace("SERVICE  pub0", &format!("{DELETED_PREFIX}SERVICE  pub0"))
        );
        let web = svc("service pub0 port * 80 TCP 192.168.77.10 8080 0x8000");
        let (out, n) = with_deleted(FILE, &web);
        assert_eq!(n, 1);
        assert!(out.contains(&format!(
            "{DELETED_PREFIX}service pub0 port * 80 TCP 192.168.77.10 8080 0x8000   # web\r\n"
        )));
        // Different flags: another service, nothing changes.
        let web_other = svc("service pub0 port * 80 TCP 192.168.77.10 8080 0x4000");
        assert_eq!(with_deleted(FILE, &web_other), (FILE.to_string(), 0));
        // The result still loads, without the deleted service.
        let c = config::parse_config(&out, "t").unwrap();
        assert_eq!(c.services.len(), 1);
        assert_eq!(
            c.services[0].service,
            svc("service pub0 port * 53 UDP 192.168.77.10 5353")
        );
    }

    #[test]
    fn an_added_duplicate_is_caught_by_the_check() {
        let dup = svc("service pub0 port * 80 TCP 192.168.77.11 8080");
        let out = with_added(FILE, &dup);
        let e = check(Path::new("/etc/netnat/netnat.conf"), &out).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/etc/netnat/netnat.conf:7:"), "{text}");
        assert!(text.contains("both claim the apparent endpoint"), "{text}");
    }

    #[test]
    fn atomic_write_keeps_mode_and_follows_links() {
        let dir = std::env::temp_dir().join(format!("netnat-save-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("netnat.conf");
        std::fs::write(&file, FILE).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("link.conf");
        std::os::unix::fs::symlink(&file, &link).unwrap();

        let (real, text) = read(&link).unwrap();
        assert_eq!(real, std::fs::canonicalize(&file).unwrap());
        let s = svc("service pub0 port * 81 TCP 192.168.77.10 8081");
        let new = with_added(&text, &s);
        check(&link, &new).unwrap();
        write_atomic(&real, &new).unwrap();

        assert_eq!(std::fs::read_to_string(&file).unwrap(), new);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("netnat-save"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
