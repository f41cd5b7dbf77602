//! Log lines on stderr: readable text by default, one JSON object a line on request.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

struct Logger {
    format: LogFormat,
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ts = crate::state::now_rfc3339();
        let level = record.level();
        let line = match self.format {
            LogFormat::Text => {
                let tag = match level {
                    Level::Error => "error",
                    Level::Warn => "warning",
                    Level::Info => "info",
                    Level::Debug => "debug",
                    Level::Trace => "trace",
                };
                format!("{ts} bootstrap {tag}: {}\n", record.args())
            }
            LogFormat::Json => {
                let mut s = serde_json::json!({
                    "ts": ts,
                    "level": level.as_str().to_ascii_lowercase(),
                    "msg": record.args().to_string(),
                })
                .to_string();
                s.push('\n');
                s
            }
        };
        // Nothing sensible to do when stderr is gone.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger; `verbose` 0 = info, 1 = debug, 2+ = trace.
pub fn init(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    if log::set_boxed_logger(Box::new(Logger { format, level })).is_ok() {
        log::set_max_level(level);
    }
}
