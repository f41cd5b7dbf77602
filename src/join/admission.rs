//! Control-plane admission: one controller joins at a time. The lease names its holder
//! and expires on its own, so a joiner that dies does not block the others for good; it
//! is kept in a file so a restarted join service still honours it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a controller may take to join before its lease lapses.
pub const LEASE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Seconds since the Unix epoch.
    until: u64,
}

/// The lease, and where it is kept (a real path; `None` keeps it in memory only).
#[derive(Debug)]
pub struct Admission {
    lease: Option<Lease>,
    file: Option<PathBuf>,
    duration: Duration,
}

impl Admission {
    /// Admission kept in `file` (read back if it is there).
    pub fn new(file: Option<PathBuf>, duration: Duration) -> Admission {
        let lease = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Admission {
            lease,
            file,
            duration,
        }
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let result = match &self.lease {
            Some(lease) => serde_json::to_vec(lease)
                .map_err(std::io::Error::other)
                .and_then(|bytes| crate::host::temp::replace(file, &bytes, 0o600)),
            None => match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            log::warn!("cannot keep the admission lease in {}: {e}", file.display());
        }
    }

    /// Gives the lease to `node` (again, if it holds it); `Err` names the holder.
    pub fn acquire(&mut self, node: &str) -> Result<(), String> {
        let now = super::unix_now();
        if let Some(lease) = &self.lease {
            if lease.holder != node && lease.until > now {
                return Err(format!(
                    "admission busy: {} is joining the control plane (lease for {} s more)",
                    lease.holder,
                    lease.until - now
                ));
            }
        }
        self.lease = Some(Lease {
            holder: node.to_owned(),
            until: now + self.duration.as_secs(),
        });
        self.save();
        Ok(())
    }

    /// Ends `node`'s lease (a no-op for anyone else).
    pub fn release(&mut self, node: &str) {
        if self.lease.as_ref().is_some_and(|l| l.holder == node) {
            self.lease = None;
            self.save();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_until_release_or_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lease.json");
        let mut a = Admission::new(Some(file.clone()), LEASE);
        a.acquire("b").unwrap();
        a.acquire("b").unwrap();
        let busy = a.acquire("c").unwrap_err();
        assert!(busy.contains("b is joining"), "{busy}");
        // A restarted service still honours it.
        let mut again = Admission::new(Some(file.clone()), LEASE);
        assert!(again.acquire("c").is_err());
        again.release("c");
        assert!(again.acquire("c").is_err());
        again.release("b");
        again.acquire("c").unwrap();
        // An expired lease lapses.
        let mut short = Admission::new(None, Duration::from_secs(0));
        short.acquire("x").unwrap();
        short.acquire("y").unwrap();
    }

    #[test]
    fn a_symlink_planted_at_the_old_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("lease.tmp")).unwrap();
        let file = dir.path().join("lease.json");
        Admission::new(Some(file.clone()), LEASE)
            .acquire("b")
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&file)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(Admission::new(Some(file), LEASE).acquire("c").is_err());
    }
}
