//! How a command that applies a plan ends when asked to stop (SIGTERM, SIGINT), and the
//! failure marker every failed or stopped `up` and `upgrade` leaves.

use super::Error;
use crate::host::Host;
use crate::state::{self, FailedMarker};

impl Error {
    /// The stop signal (SIGTERM, SIGINT) that ended the command, when one did; the exit
    /// code is then 128 + its number.
    pub fn stopped_by(&self) -> Option<crate::interrupt::Stop> {
        match self {
            Error::Apply(e) => e.stopped_by(),
            Error::Stopped { signal, .. } => Some(*signal),
            _ => None,
        }
    }
}

/// From here on, SIGTERM and SIGINT stop the command at the next safe point instead of
/// at once (for commands that apply a plan, once they hold the lock: before that,
/// nothing has changed and ending at once is right).
pub(super) fn catch_stop_signals() -> Result<(), Error> {
    crate::interrupt::catch()
        .map_err(|e| Error::Failed(format!("cannot catch SIGTERM and SIGINT: {e}")))
}

/// Writes the failure marker (`failed.json`): the step, the error, the exit code and the
/// signal that stopped the run, if one did.
pub(super) fn record_failure(host: &dyn Host, error: &Error) {
    let step = match error {
        Error::Apply(e) => e.step_id().map(str::to_owned),
        _ => None,
    };
    let marker = FailedMarker {
        at: state::now_rfc3339(),
        step,
        error: error.to_string(),
        exit_code: error.exit_code(),
        signal: error.stopped_by().map(|s| s.name().to_owned()),
    };
    if let Err(e) = state::write_json(host, state::FAILED_FILE, &marker) {
        log::warn!("cannot record the failure in {}: {e}", state::FAILED_FILE);
    }
}
