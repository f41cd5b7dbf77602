//! A conservative estimate of how many bits of entropy a typed secret holds.
//!
//! The join secret is the cluster's root of trust and anyone who can connect to a join
//! service can test guesses offline, so a typed secret is judged by what a guesser with
//! word lists and pattern rules would need, not by its length. The estimate errs low:
//! a run of letters shaped like a word counts 2 bits a letter (however random it may
//! be), a repeat of anything already seen counts only where it is and how long, a
//! counting sequence counts its start, a symbol used again counts almost nothing, and
//! the whole can never exceed its observed (Shannon) entropy, so strings of few kinds of
//! characters count low. Random hex or base64 of 32 bytes still comes out far above 128
//! bits; passphrases of a few words, and anything repeated, far below.

use std::collections::BTreeMap;

/// Characters looked at: enough for any secret worth its bits; keeps the work bounded.
const MAX_CHARS: usize = 256;
/// Bits a letter of a word-shaped run is worth: English words in a guesser's list.
const WORD_LETTER_BITS: f64 = 2.0;
/// What a 19xx or 20xx year is worth.
const YEAR_BITS: f64 = 7.7;

/// The estimated entropy of `secret`, in bits.
pub fn estimate_bits(secret: &str) -> f64 {
    let chars: Vec<char> = secret.chars().take(MAX_CHARS).collect();
    if chars.is_empty() {
        return 0.0;
    }
    // (`abs`: an all-alike string is -0.0 bits.)
    token_bits(&chars).min(shannon_bits(&chars)).abs()
}

/// The observed entropy: the string's length times its characters' Shannon entropy.
fn shannon_bits(chars: &[char]) -> f64 {
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    for c in chars {
        *counts.entry(*c).or_default() += 1;
    }
    let n = chars.len() as f64;
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_char * n
}

/// How many characters a guesser would try per position: 16 for hex, else the sum of
/// the classes present.
fn alphabet_size(chars: &[char]) -> f64 {
    if is_hex(chars) {
        return 16.0;
    }
    let mut size = 0.0;
    for (present, class_size) in [
        (chars.iter().any(char::is_ascii_lowercase), 26.0),
        (chars.iter().any(char::is_ascii_uppercase), 26.0),
        (chars.iter().any(char::is_ascii_digit), 10.0),
        (
            chars
                .iter()
                .any(|c| c.is_ascii() && !c.is_ascii_alphanumeric()),
            33.0,
        ),
        (chars.iter().any(|c| !c.is_ascii()), 100.0),
    ] {
        if present {
            size += class_size;
        }
    }
    size
}

/// Hex digits of one case.
fn is_hex(chars: &[char]) -> bool {
    chars.iter().all(char::is_ascii_hexdigit)
        && (!chars.iter().any(char::is_ascii_uppercase)
            || !chars.iter().any(char::is_ascii_lowercase))
}

/// The string cut into the cheapest tokens a guesser would use, their bits added up.
fn token_bits(chars: &[char]) -> f64 {
    let per_char = alphabet_size(chars).log2();
    let hex = is_hex(chars);
    let mut total = 0.0;
    let mut symbols_seen: Vec<char> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (len, bits) = if let Some(len) = repeat_at(chars, i) {
            // Where the earlier copy is, and how long this one is.
            (len, (i as f64).log2().max(1.0) + (len as f64).log2())
        } else if let Some(len) = sequence_at(chars, i) {
            (len, per_char + (len as f64).log2() + 1.0)
        } else if let Some(len) = word_at(chars, i) {
            let shaped = WORD_LETTER_BITS * len as f64 + 1.0;
            (len, shaped.min(per_char * len as f64))
        } else if let Some(len) = year_at(chars, i) {
            (len, YEAR_BITS)
        } else if let Some(len) = (!hex).then(|| digits_at(chars, i)).flatten() {
            (len, 10f64.log2().min(per_char) * len as f64)
        } else if !chars[i].is_alphanumeric() && symbols_seen.contains(&chars[i]) {
            // A separator used again: which of the symbols seen so far.
            (1, (symbols_seen.len() as f64 + 1.0).log2())
        } else {
            if !chars[i].is_alphanumeric() {
                symbols_seen.push(chars[i]);
            }
            (1, per_char)
        };
        total += bits;
        i += len;
    }
    total
}

/// The longest run of at least 3 characters at `i` that already occurred before `i`
/// (overlapping allowed, so `aaaa` and `abab…` are repeats).
fn repeat_at(chars: &[char], i: usize) -> Option<usize> {
    let mut best = 0;
    for start in 0..i {
        let mut len = 0;
        while i + len < chars.len() && chars[start + len] == chars[i + len] {
            len += 1;
        }
        best = best.max(len);
    }
    (best >= 3).then_some(best)
}

/// A counting run of at least 3 at `i`: `abc`, `4321`, each one step from the last.
fn sequence_at(chars: &[char], i: usize) -> Option<usize> {
    let step = |a: char, b: char| {
        let same_class = (a.is_ascii_digit() && b.is_ascii_digit())
            || (a.is_ascii_lowercase() && b.is_ascii_lowercase())
            || (a.is_ascii_uppercase() && b.is_ascii_uppercase());
        same_class.then(|| b as i64 - a as i64)
    };
    let first = step(*chars.get(i)?, *chars.get(i + 1)?)?;
    if first.abs() != 1 {
        return None;
    }
    let mut len = 2;
    while i + len < chars.len() && step(chars[i + len - 1], chars[i + len]) == Some(first) {
        len += 1;
    }
    (len >= 3).then_some(len)
}

/// A run of at least 3 letters at `i`, up to the next non-letter or the next repeat,
/// shaped like a word: all lower case, all upper case, or capitalised.
fn word_at(chars: &[char], i: usize) -> Option<usize> {
    let letters = chars[i..]
        .iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    let len = (i + 1..i + letters)
        .find(|&k| repeat_at(chars, k).is_some())
        .map_or(letters, |k| k - i);
    if len < 3 {
        return None;
    }
    let run = &chars[i..i + len];
    let rest = &run[1..];
    let shaped = run.iter().all(char::is_ascii_lowercase)
        || run.iter().all(char::is_ascii_uppercase)
        || (run[0].is_ascii_uppercase() && rest.iter().all(char::is_ascii_lowercase));
    shaped.then_some(len)
}

/// A run of at least 2 digits at `i` (a number a guesser tries as such).
fn digits_at(chars: &[char], i: usize) -> Option<usize> {
    let len = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    (len >= 2).then_some(len)
}

/// A year, 1900 to 2099, at `i` and not inside a longer run of digits.
fn year_at(chars: &[char], i: usize) -> Option<usize> {
    let digits: String = chars.get(i..i + 4)?.iter().collect();
    let digit_after = chars.get(i + 4).is_some_and(char::is_ascii_digit);
    let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
    let alone = !digit_after && !digit_before;
    let year = alone && (digits.starts_with("19") || digits.starts_with("20"));
    (year && digits.chars().all(|c| c.is_ascii_digit())).then_some(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrases_repeats_and_few_kinds_of_characters_count_low() {
        for weak in [
            "correct horse battery staple 2024",
            "password password password password!",
            "correct horse battery staple orange violin desk river",
            "Correct-Horse-Battery-Staple-Orange-Violin-1987!",
            "correcthorsebatterystapleorangeviolindeskriver",
            "0123456789abcdef0123456789abcdef",
            "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz",
            "P@ssw0rdP@ssw0rdP@ssw0rdP@ssw0rdP@ssw0rd",
            "01101001011010010110100101101001011010010110100101101001",
            "REPLACE-WITH-THE-OUTPUT-OF-bootstrap-secret-generate",
            &"a".repeat(200),
            &"ab".repeat(64),
            "qwertyuiopasdfghjklzxcvbnmqwertyuiop",
        ] {
            let bits = estimate_bits(weak);
            assert!(bits < 128.0, "{weak:?}: {bits:.0} bits");
        }
        assert_eq!(estimate_bits(""), 0.0);
    }

    #[test]
    fn random_hex_and_base64_of_32_bytes_count_high() {
        use base64::Engine;
        let mut lows = [f64::MAX; 3];
        for _ in 0..5000 {
            let hex = crate::random::hex(32).unwrap();
            lows[0] = lows[0].min(estimate_bits(&hex));
            lows[1] = lows[1].min(estimate_bits(&hex.to_ascii_uppercase()));
            let bytes = hex::decode(crate::random::hex(32).unwrap()).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            lows[2] = lows[2].min(estimate_bits(&b64));
        }
        // 256 bits each; the estimate takes some away, but stays well above 128.
        assert!(
            lows.iter().all(|&bits| bits > 140.0),
            "lowest estimates (hex, HEX, base64): {lows:?}"
        );
        // 16 random bytes are 128 bits: a conservative estimate cannot vouch for them.
        let short = crate::random::hex(16).unwrap();
        assert!(estimate_bits(&short) < 128.0, "{short}");
    }

    #[test]
    fn long_random_passwords_count_high() {
        let alphabet: Vec<u8> = (b'!'..=b'~').collect();
        for _ in 0..500 {
            // 40 characters: at 32 a random one now and then repeats enough characters
            // to fall under the conservative estimate.
            let password = crate::random::from_alphabet(40, &alphabet).unwrap();
            let bits = estimate_bits(&password);
            assert!(bits > 128.0, "{password:?}: {bits:.0} bits");
        }
    }
}
