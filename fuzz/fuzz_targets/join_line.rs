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
            // Told apart from a fixed message that happens to hold the same text: with
            // the secret swapped for other characters, an echo changes the reason.
            let secret = text
                .split_once("credential=")
                .and_then(|(_, c)| c.split_once('.'))
                .map(|(_, s)| s.split('&').next().unwrap_or_default().trim())
                .unwrap_or_default();
            if secret.len() >= 32 && reason.contains(secret) {
                let filler = if secret.starts_with('x') { "y" } else { "x" };
                let swapped = text.replace(secret, &filler.repeat(secret.len()));
                let again = JoinLine::parse(&swapped).err().unwrap_or_default();
                assert_eq!(again, reason, "the reason echoes the secret: {reason}");
            }
        }
    }
});
