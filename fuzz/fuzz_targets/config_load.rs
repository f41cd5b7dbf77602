//! Config parsing and validation: the bytes as `/etc/bootstrap/config.yaml`, layered
//! over the defaults and checked, exactly as `up` loads it. Any `Err` is fine; a panic
//! is a bug.
#![no_main]

use bootstrap::config::{self, Sources};
use bootstrap::host::FakeHost;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A config file is read as text; bytes that are not UTF-8 stop at the read.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Files the config may name (a join secret, registry passwords), so the checks
    // that read them run too.
    let host = FakeHost::new()
        .with_file(config::DEFAULT_CONFIG_PATH, text)
        .with_file(
            "/etc/bootstrap/join-secret",
            "bjs1-00000000000000000000000000000000000000000000000000000000000000000000000",
        )
        .with_file(
            "/etc/bootstrap/registry-password",
            "correct horse battery staple 1234",
        );
    if let Ok(config) = config::load(&host, &Sources::default()) {
        let _ = config.to_redacted_yaml();
    }
});
