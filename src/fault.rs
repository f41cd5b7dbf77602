//! Fault injection for the crash tests: named points where a run may die as if the power
//! went out. Compiled in only with the `fault-injection` feature; without it, [`point`]
//! is an empty inline function and none of this module's names are in the binary.
//!
//! With the feature, two variables steer it (both `BOOTSTRAP_*`, so no child command ever
//! sees them): `BOOTSTRAP_FAULT_LIST=FILE` appends the name of every point reached, one a
//! line, and `BOOTSTRAP_FAULT_AT=N` aborts the process at the N-th point reached (counted
//! from 1) — `abort`, not `exit`: no destructor, no flush, no lock release runs, as after
//! a power loss. See `docs/reliability.md`.

/// A point where a crash test may kill the run. `name` says where (`step-before:ID`,
/// `rename:PATH`, …); the crash test lists them but only counts on their order.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: impl FnOnce() -> String) {}

/// Whether `key` is one of this module's environment variables (never configuration).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn owns_env(_key: &str) -> bool {
    false
}

#[cfg(feature = "fault-injection")]
pub use enabled::{owns_env, point};

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    const PREFIX: &str = "BOOTSTRAP_FAULT_";
    const AT: &str = "BOOTSTRAP_FAULT_AT";
    const LIST: &str = "BOOTSTRAP_FAULT_LIST";

    struct Settings {
        at: Option<u64>,
        list: Option<std::path::PathBuf>,
    }

    fn settings() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(|| Settings {
            // A value that does not parse is a broken test: die loudly rather than run
            // the scenario without its fault and pass for the wrong reason.
            at: std::env::var(AT).ok().map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{AT}={v}: not a number"))
            }),
            list: std::env::var_os(LIST).map(Into::into),
        })
    }

    static REACHED: AtomicU64 = AtomicU64::new(0);

    /// Counts the point, notes its name when asked to, and dies here when it is the one.
    pub fn point(name: impl FnOnce() -> String) {
        let settings = settings();
        if settings.at.is_none() && settings.list.is_none() {
            return;
        }
        let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
        let name = name();
        if let Some(list) = &settings.list {
            // Appended and closed before a possible abort, so the list shows where it died.
            let line = format!("{n} {name}\n");
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(list)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                panic!("{LIST}={}: {e}", list.display());
            }
        }
        if settings.at == Some(n) {
            eprintln!("fault injection: aborting at point {n} ({name})");
            std::process::abort();
        }
    }

    /// Whether `key` is one of this module's environment variables.
    pub fn owns_env(key: &str) -> bool {
        key.starts_with(PREFIX)
    }
}
