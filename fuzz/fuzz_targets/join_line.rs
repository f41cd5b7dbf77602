//! Join lines (`bootstrap-join://ADDR:PORT/?role=…&pin=…&credential=ID.SECRET`), as an
//! operator pastes them into `--join` or cloud-init: any text is refused with a reason
//! that never echoes the secret, or parsed into a line whose text parses back to it.
#![no_main]

use bootstrap::join::manual::JoinLine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match JoinLine::parse(text) {
        Ok(line) => {
            let again = JoinLine::parse(&line.text()).expect("a parsed line's text parses");
            assert_eq!(again, line, "a join line's text does not round-trip");
            let _ = line.keys();
        }
        Err(reason) => {
            // The reason may be logged: the credential's secret part must not be in it.
            if let Some((_, secret)) = text.split_once("credential=").and_then(|(_, c)| c.split_once('.')) {
                let secret = secret.split('&').next().unwrap_or_default().trim();
                if secret.len() >= 32 {
                    assert!(!reason.contains(secret), "the reason echoes the secret: {reason}");
                }
            }
        }
    }
});
