//! Serde for values parsed from strings with an error that says what was expected.
//!
//! Used as `#[serde(with = "crate::parsed")]` (or `parsed::option`) on typed config
//! fields, so a bad IP address reads "expected an IP address such as 10.0.0.10, got
//! \"10.0.0.300\"" instead of a parser's internal wording.

use std::fmt::Display;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serializer};

/// A type parsed from a string, with a phrase naming what a valid value looks like.
pub trait Expected: FromStr + Display {
    /// What a valid value looks like.
    const EXPECTED: &'static str;
}

impl Expected for IpAddr {
    const EXPECTED: &'static str = "an IP address such as 10.0.0.10 or fd00::10";
}

impl Expected for ipnet::IpNet {
    const EXPECTED: &'static str = "a CIDR such as 10.42.0.0/16 or fd00:42::/56";
}

fn parse<T: Expected>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected {}, got {text:?}", T::EXPECTED))
}

/// Writes the value's `Display` form.
pub fn serialize<T: Expected, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Reads the value from a string.
pub fn deserialize<'de, T: Expected, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// The same for `Option<T>` fields (use with `#[serde(default)]`).
pub mod option {
    use super::*;

    /// Writes `Some` as its `Display` form and `None` as null.
    pub fn serialize<T: Expected, S: Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional value from a string.
    pub fn deserialize<'de, T: Expected, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
