//! The one `/etc/hosts` line bootstrap owns: `IP NAMES # bootstrap`.
//!
//! `/etc/hosts` is shared, so bootstrap never touches a line it did not write: its own
//! line carries the marker, is replaced in place, and `reset` removes it.

/// The marker at the end of bootstrap's line.
pub const MARKER: &str = "# bootstrap";

/// The line for `ip` and `names`.
pub fn line(ip: &str, names: &[String]) -> String {
    format!("{ip} {} {MARKER}", names.join(" "))
}

fn is_ours(line: &str) -> bool {
    line.trim_end().ends_with(MARKER)
}

/// Whether `text` has exactly our line and no other line of ours.
pub fn has_entry(text: &str, ip: &str, names: &[String]) -> bool {
    let want = line(ip, names);
    let ours: Vec<&str> = text.lines().filter(|l| is_ours(l)).collect();
    ours.len() == 1 && ours[0].trim_end() == want
}

/// Whether `text` has any line of ours.
pub fn has_any(text: &str) -> bool {
    text.lines().any(is_ours)
}

/// `text` with our line set (replacing any earlier one in place, else appended).
pub fn with_entry(text: &str, ip: &str, names: &[String]) -> String {
    let want = line(ip, names);
    let mut out = String::new();
    let mut placed = false;
    for l in text.lines() {
        if is_ours(l) {
            if !placed {
                out.push_str(&want);
                out.push('\n');
                placed = true;
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !placed {
        out.push_str(&want);
        out.push('\n');
    }
    out
}

/// `text` without our line.
pub fn without_entry(text: &str) -> String {
    text.lines()
        .filter(|l| !is_ours(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owns_only_its_line() {
        let names = vec!["sea.hub".to_owned()];
        let base = "127.0.0.1 localhost\n10.0.0.9 other\n";
        let once = with_entry(base, "10.0.0.10", &names);
        assert_eq!(
            once,
            "127.0.0.1 localhost\n10.0.0.9 other\n10.0.0.10 sea.hub # bootstrap\n"
        );
        assert!(has_entry(&once, "10.0.0.10", &names));
        assert_eq!(with_entry(&once, "10.0.0.10", &names), once, "idempotent");
        let moved = with_entry(&once, "10.0.0.11", &names);
        assert!(
            moved.contains("10.0.0.11 sea.hub # bootstrap") && !moved.contains("10.0.0.10 sea")
        );
        assert_eq!(without_entry(&moved), base);
    }
}
