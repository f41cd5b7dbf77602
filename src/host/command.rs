//! Commands as explicit argv: no shell, host paths mapped under the root, secrets only on stdin.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::secret::Secret;

/// One argument: a literal, or a host path that is mapped under the root when run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Arg {
    Lit(String),
    Path(PathBuf),
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arg::Lit(s) => f.write_str(s),
            Arg::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Lit(s.to_owned())
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Lit(s)
    }
}

impl From<&Path> for Arg {
    fn from(p: &Path) -> Self {
        Arg::Path(p.to_path_buf())
    }
}

/// A command to run: program (looked up on `PATH`), argv, extra environment, optional
/// secret stdin and a timeout. The child inherits bootstrap's environment plus what is
/// listed here, but never bootstrap's own `BOOTSTRAP_*` variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<Arg>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    #[serde(skip)]
    pub stdin: Option<Secret>,
    #[serde(with = "crate::duration_serde")]
    pub timeout: Duration,
    /// The working folder (a host path, mapped under the root); bootstrap's own when
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

/// The default bound on a command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

impl CommandSpec {
    /// A command with no arguments and the default timeout.
    pub fn new(program: impl Into<String>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: DEFAULT_COMMAND_TIMEOUT,
            cwd: None,
        }
    }

    /// Runs it in the host folder `dir`.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several literal arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Arg>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Feeds `input` on standard input (never in argv or logs).
    pub fn stdin(mut self, input: Secret) -> Self {
        self.stdin = Some(input);
        self
    }
}

impl fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// What a finished command returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// "exit code N" or "killed by a signal".
    pub fn status_text(&self) -> String {
        match self.code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        }
    }

    /// Stdout as lossy UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}
