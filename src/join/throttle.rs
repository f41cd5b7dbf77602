//! Rate-limited warning lines: a refusal the service makes hundreds of times a second
//! under attack is logged once per interval with a count of the ones left out, so an
//! attacker cannot fill the journal (or the disk under it) through the service.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of refusal is logged at most.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// One kind of warning, logged at most once per interval.
pub struct Throttled {
    every: Duration,
    /// When the last line was logged, and how many were left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// A warning logged at most once per `every`.
    pub const fn new(every: Duration) -> Throttled {
        Throttled {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs `line()` at `warn` unless a line of this kind was logged less than the
    /// interval ago; the next line logged says how many were left out. `true` if logged.
    pub fn warn(&self, line: impl FnOnce() -> String) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, left_out) = &mut *state;
        if last.is_some_and(|at| at.elapsed() < self.every) {
            *left_out += 1;
            return false;
        }
        let more = match *left_out {
            0 => String::new(),
            n => format!(
                " ({n} more like it in the {} s before, not logged)",
                self.every.as_secs()
            ),
        };
        log::warn!("{}{more}", line());
        *last = Some(Instant::now());
        *left_out = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let t = Throttled::new(Duration::from_millis(200));
        assert!(t.warn(|| "a".into()));
        let logged = (0..1000).filter(|_| t.warn(|| "b".into())).count();
        assert_eq!(logged, 0);
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.warn(|| "c".into()));
        assert_eq!(t.state.lock().unwrap().1, 0);
    }
}
