//! Serde for durations written the human way (`30s`, `5m`, `1h`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes a duration as `1h 30m`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Reads `30s`, `5m`, `1h30m`; the error says what was expected.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Parses a positive human duration.
pub fn parse(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "expected a duration such as 30s, 5m or 1h, got {text:?}"
        )),
    }
}
