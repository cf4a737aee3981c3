//! `netnat service add/del` words as an administrator types them (issue 15): a whole service
//! line given as one quoted word is the same words. Checked before any daemon is asked, so no
//! daemon is needed: accepted words reach the control socket (exit 3 here: nothing listens),
//! refused ones stop at exit 2 with the word named.

use std::process::Command;

fn service(args: &[&str]) -> std::process::Output {
    let sock = std::env::temp_dir().join(format!("netnat-cli-words-{}.sock", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_netnat"))
        .arg("service")
        .args(args)
        .arg("--control")
        .arg(&sock)
        .output()
        .expect("run netnat")
}

#[test]
fn one_quoted_line_is_split_into_its_words() {
    for sub in ["add", "del"] {
        let out = service(&[sub, "pub0 port * 91 TCP 192.168.77.10 8091 0x8000"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{sub}: {stderr}");
        assert!(stderr.contains("netnat is not running"), "{sub}: {stderr}");
        // Mixed: part quoted, part not, tabs inside.
        let out = service(&[sub, "pub0\tport *", "91", "TCP 192.168.77.10", "8091"]);
        assert_eq!(out.status.code(), Some(3), "{sub}: {:?}", out);
    }
    // A bad word inside the quoted line is named by its place among the split words.
    let out = service(&["add", "pub0 port * 99999 TCP 192.168.77.10 8091"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("word 4 (\"99999\")"), "{stderr}");
}
