//! SIGTERM and SIGINT while a plan is applied: noted, not acted on in the handler, so the
//! plan engine can stop at the next safe point (a step boundary, or its child stopped)
//! with the journal consistent.
//!
//! The handler only stores the signal's number. A second signal means "now": the handler
//! kills the process group of the command in flight, if any, and exits at once with the
//! conventional code (every file bootstrap writes is atomic, so that is as safe as a kill).

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The signal received, 0 while none.
static PENDING: AtomicI32 = AtomicI32::new(0);
/// The process group of the command in flight, 0 while none.
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// The signals that ask bootstrap to stop.
const STOP_SIGNALS: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

/// A signal that asked bootstrap to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop(pub Signal);

impl Stop {
    /// `SIGTERM`, `SIGINT`.
    pub fn name(self) -> &'static str {
        self.0.as_str()
    }

    /// The exit code a shell gives a process killed by it: 128 + its number.
    pub fn exit_code(self) -> i32 {
        128 + self.0 as i32
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

extern "C" fn on_signal(signo: nix::libc::c_int) {
    // Async-signal-safe only: atomics, kill(2), _exit(2).
    if PENDING.swap(signo, Ordering::SeqCst) != 0 {
        let group = CHILD_GROUP.load(Ordering::SeqCst);
        if group > 0 {
            // SAFETY: kill(2) is async-signal-safe; a stale group gets ESRCH.
            unsafe { nix::libc::kill(-group, nix::libc::SIGKILL) };
        }
        // SAFETY: _exit(2) is async-signal-safe and runs no destructors.
        unsafe { nix::libc::_exit(128 + signo) };
    }
}

/// Catches SIGTERM and SIGINT from now on (for commands that apply a plan). Before
/// this, they end the process at once, which is safe where nothing has been changed yet.
pub fn catch() -> Result<(), nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        // Restarted system calls: a signal must not turn a read or write into an error.
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in STOP_SIGNALS {
        // SAFETY: the handler only touches atomics and async-signal-safe calls.
        unsafe { signal::sigaction(sig, &action) }?;
    }
    Ok(())
}

/// The stop signal received, if any.
pub fn pending() -> Option<Stop> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok().map(Stop),
    }
}

/// Sleeps for `duration`, or less when a stop signal arrives (then it is returned), so a
/// wait between retries does not hold a stop up.
pub fn sleep(duration: std::time::Duration) -> Option<Stop> {
    let slice = std::time::Duration::from_millis(50);
    let end = std::time::Instant::now() + duration;
    loop {
        if let Some(stop) = pending() {
            return Some(stop);
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(slice));
    }
}

/// Notes the process group of the command now running, so a second signal can take it
/// down with bootstrap; cleared when the guard drops.
pub fn child_group(pgid: i32) -> ChildGroup {
    CHILD_GROUP.store(pgid, Ordering::SeqCst);
    ChildGroup(pgid)
}

/// The command in flight, while it runs (see [`child_group`]).
#[derive(Debug)]
pub struct ChildGroup(i32);

impl Drop for ChildGroup {
    fn drop(&mut self) {
        let _ = CHILD_GROUP.compare_exchange(self.0, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Stop(Signal::SIGTERM).exit_code(), 143);
        assert_eq!(Stop(Signal::SIGINT).exit_code(), 130);
        assert_eq!(Stop(Signal::SIGTERM).to_string(), "SIGTERM");
    }

    #[test]
    fn nothing_is_pending_unless_caught() {
        // Raising a signal here would reach every test of this process; the binary's
        // tests (tests/signals.rs) send real ones.
        assert_eq!(pending(), None);
        let guard = child_group(12345);
        assert_eq!(CHILD_GROUP.load(Ordering::SeqCst), 12345);
        drop(guard);
        assert_eq!(CHILD_GROUP.load(Ordering::SeqCst), 0);
    }
}
