//! Human-readable plan output.

use std::fmt::Write;

use super::check::Status;
use super::Plan;

impl Plan {
    /// One line a step, grouped by phase, each marked with what a look at the host says
    /// (`ok` in place, `+` to apply, `?` decided by the journal).
    pub fn render(&self, statuses: &[Status]) -> String {
        let mut out = String::new();
        let mut phase = None;
        for (i, step) in self.steps.iter().enumerate() {
            if phase != Some(step.phase) {
                let _ = writeln!(out, "{}:", step.phase);
                phase = Some(step.phase);
            }
            let mark = match statuses.get(i) {
                Some(Status::Done) => "ok",
                Some(Status::Pending) => "+",
                Some(Status::Unknown) | None => "?",
            };
            let _ = writeln!(out, "  {mark:>2} {:>2}. {}", i + 1, step.action);
            let _ = writeln!(out, "         why: {}", step.reason);
        }
        out
    }
}
