//! Any UTF-8 text given to the configuration parser: it must answer, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = netnat::config::parse_config(text, "fuzz");
    }
});
