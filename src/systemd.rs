//! systemd units: one renderer for every unit file bootstrap writes, the quoting rules
//! of `ExecStart` and path lists, and the `daemon-reload` step that follows unit files.

use std::path::{Path, PathBuf};

use crate::plan::{Action, Phase, Step};

/// Why a unit could not be rendered; names the section and key or the field.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("unit section name {name:?}: only letters are allowed")]
    BadSection { name: String },
    #[error("unit [{section}] key {key:?}: only letters and digits are allowed")]
    BadKey { section: String, key: String },
    #[error("unit [{section}] {key}: {reason}")]
    BadValue {
        section: String,
        key: String,
        reason: &'static str,
    },
    #[error("{field}: {path} is not an absolute path")]
    NotAbsolute { field: &'static str, path: PathBuf },
    #[error("{field}: {path} {reason}")]
    BadPath {
        field: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
}

/// One `[Section]` of a unit file: keys and values in order (a key may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSection {
    /// `Unit`, `Service`, `Install`...
    pub name: String,
    /// `(key, value)` pairs, written as `key=value` in this order.
    pub entries: Vec<(String, String)>,
}

impl UnitSection {
    /// An empty section.
    pub fn new(name: impl Into<String>) -> Self {
        UnitSection {
            name: name.into(),
            entries: Vec::new(),
        }
    }

    /// Adds `key=value`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.entries.push((key.into(), value.into()));
        self
    }
}

/// A systemd unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdUnit {
    /// Comment lines written first, each after `# `.
    pub header: Vec<String>,
    /// The sections, in order.
    pub sections: Vec<UnitSection>,
    /// A blank line between the header and the first section (the upstream units
    /// bootstrap writes as their packages do have none).
    pub gap_after_header: bool,
}

impl SystemdUnit {
    /// The file's text. Values are checked to stay on their line: no control
    /// characters, no trailing backslash (a line continuation).
    pub fn render(&self) -> Result<String, UnitError> {
        let mut out = String::new();
        for line in &self.header {
            if line.chars().any(char::is_control) {
                return Err(UnitError::BadValue {
                    section: String::new(),
                    key: "header comment".into(),
                    reason: "contains a control character",
                });
            }
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        for (i, section) in self.sections.iter().enumerate() {
            if !section.name.bytes().all(|b| b.is_ascii_alphabetic()) || section.name.is_empty() {
                return Err(UnitError::BadSection {
                    name: section.name.clone(),
                });
            }
            if i > 0 || (self.gap_after_header && !self.header.is_empty()) {
                out.push('\n');
            }
            out.push_str(&format!("[{}]\n", section.name));
            for (key, value) in &section.entries {
                if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(UnitError::BadKey {
                        section: section.name.clone(),
                        key: key.clone(),
                    });
                }
                let bad = |reason| UnitError::BadValue {
                    section: section.name.clone(),
                    key: key.clone(),
                    reason,
                };
                if value.chars().any(char::is_control) {
                    return Err(bad("contains a control character (a line break?)"));
                }
                if value.ends_with('\\') {
                    return Err(bad("ends with a backslash, which would continue the line"));
                }
                out.push_str(&format!("{key}={value}\n"));
            }
        }
        Ok(out)
    }
}

/// A long-running bootstrap subcommand as a service: started after the network, run
/// again `restart_sec` seconds after it dies, enabled for multi-user boots;
/// `unit_extra` and `service_extra` add keys to `[Unit]` and `[Service]`.
pub fn daemon_unit(
    description: &str,
    exec_start: String,
    restart_sec: &str,
    unit_extra: &[(&str, &str)],
    service_extra: &[(&str, &str)],
) -> SystemdUnit {
    let unit = unit_extra.iter().fold(
        UnitSection::new("Unit")
            .set("Description", description)
            .set("Wants", "network-online.target")
            .set("After", "network-online.target"),
        |section, (k, v)| section.set(*k, *v),
    );
    let service = service_extra.iter().fold(
        UnitSection::new("Service")
            .set("ExecStart", exec_start)
            .set("Restart", "always")
            .set("RestartSec", restart_sec),
        |section, (k, v)| section.set(*k, *v),
    );
    SystemdUnit {
        header: vec!["Written by bootstrap; `bootstrap reset` removes it.".to_owned()],
        gap_after_header: true,
        sections: vec![
            unit,
            service,
            UnitSection::new("Install").set("WantedBy", "multi-user.target"),
        ],
    }
}

/// `systemctl daemon-reload`, keyed by the unit files it follows so that a changed unit
/// is reloaded again on the next run.
pub fn daemon_reload(phase: Phase, units: &[&str]) -> Step {
    let inputs: Vec<&[u8]> = units.iter().map(|u| u.as_bytes()).collect();
    Step::new(
        phase,
        "systemd must read the unit files written above",
        Action::RunCommand {
            command: crate::plan::check::systemctl(&["daemon-reload"]),
            done_when: None,
        },
    )
    .keyed(&inputs)
}

/// An absolute, UTF-8 path without control characters.
pub fn checked_path<'a>(field: &'static str, path: &'a Path) -> Result<&'a str, UnitError> {
    if !path.is_absolute() {
        return Err(UnitError::NotAbsolute {
            field,
            path: path.to_path_buf(),
        });
    }
    let text = path.to_str().ok_or_else(|| UnitError::BadPath {
        field,
        path: path.to_path_buf(),
        reason: "is not valid UTF-8",
    })?;
    if text.chars().any(char::is_control) {
        return Err(UnitError::BadPath {
            field,
            path: path.to_path_buf(),
            reason: "contains a control character",
        });
    }
    Ok(text)
}

/// The program of `ExecStart`: `%` escaped (specifiers), quoted when it holds spaces,
/// quotes or backslashes. systemd does not expand variables in the program path, so `$`
/// stays as it is.
pub fn exec_program(field: &'static str, path: &Path) -> Result<String, UnitError> {
    Ok(quote(&checked_path(field, path)?.replace('%', "%%")))
}

/// An argument of `ExecStart`: like the program, and `$` doubled, since arguments are
/// subject to variable expansion.
pub fn exec_argument(field: &'static str, path: &Path) -> Result<String, UnitError> {
    let text = checked_path(field, path)?.replace('$', "$$");
    Ok(quote(&text.replace('%', "%%")))
}

/// A path as one word of a path list such as `ReadWritePaths` (specifiers expanded, no
/// variables).
pub fn path_word(field: &'static str, path: &Path) -> Result<String, UnitError> {
    Ok(quote(&checked_path(field, path)?.replace('%', "%%")))
}

pub fn quote(word: &str) -> String {
    if word
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';')
    {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        word.to_string()
    }
}
