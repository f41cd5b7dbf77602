//! Join material per role, minted on demand and shared: the cache is read without
//! waiting on a mint, one mint per role runs at a time (outside any lock the others
//! need), callers waiting on it give up at their own deadline, and a failed mint is
//! remembered for a few seconds so a crowd of joiners does not run the distro's tool
//! once each.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::distro::{JoinMaterial, JoinRole};

/// Makes join material on this controller.
pub trait Minter: Send + Sync {
    /// Fresh material for `role` with a token living `ttl`; `Err` says why the cluster
    /// cannot mint yet.
    fn mint(&self, role: JoinRole, ttl: Duration) -> Result<JoinMaterial, String>;
}

/// How long a failed mint's reason is the answer before the next caller tries again.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(3);

/// What is known for one role.
#[derive(Default)]
struct Slot {
    material: Option<JoinMaterial>,
    /// The last failure, and when.
    failed: Option<(Instant, String)>,
    /// A mint for this role is running.
    minting: bool,
}

/// Material per role, and the mints under way.
pub struct Materials {
    minter: Box<dyn Minter>,
    ttl: Duration,
    slots: Mutex<HashMap<JoinRole, Slot>>,
    /// Signalled when a mint ends.
    minted: Condvar,
}

impl Materials {
    pub fn new(minter: Box<dyn Minter>, ttl: Duration) -> Materials {
        Materials {
            minter,
            ttl,
            slots: Mutex::new(HashMap::new()),
            minted: Condvar::new(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<JoinRole, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Material for `role`, reused while more than half its life remains; minted when
    /// not, by this caller or by the one already minting it, waited for until
    /// `deadline`. `Err` says why there is none (the answer is `not-ready`).
    pub fn get(&self, role: JoinRole, deadline: Instant) -> Result<JoinMaterial, String> {
        let mut slots = self.slots();
        loop {
            let slot = slots.entry(role).or_default();
            if let Some(material) = &slot.material {
                if still_fresh(material, role, self.ttl) {
                    return Ok(material.clone());
                }
            }
            if let Some((at, why)) = &slot.failed {
                if at.elapsed() < FAILURE_MEMORY {
                    return Err(why.clone());
                }
            }
            if !slot.minting {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "join material for a {role} is still being minted; ask again"
                ));
            }
            slots = self
                .minted
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        slots.entry(role).or_default().minting = true;
        drop(slots);
        // The distro's tool may take long: no lock is held while it runs.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.minter.mint(role, self.ttl)
        }))
        .unwrap_or_else(|_| Err("minting failed unexpectedly".into()));
        let mut slots = self.slots();
        let slot = slots.entry(role).or_default();
        slot.minting = false;
        match &result {
            Ok(material) => {
                slot.material = Some(material.clone());
                slot.failed = None;
            }
            Err(why) => slot.failed = Some((Instant::now(), why.clone())),
        }
        self.minted.notify_all();
        result
    }
}

/// Whether cached material may be handed out again: worker material with more than half
/// its life left. Controller material never is: with every controller minting, the
/// control-plane certificates kubeadm keeps are the ones the *last* mint uploaded, with
/// that mint's key, so a cached key from an earlier mint may no longer open them (and
/// controller joins are rare and one at a time).
fn still_fresh(material: &JoinMaterial, role: JoinRole, ttl: Duration) -> bool {
    if role == JoinRole::Controller {
        return false;
    }
    let Some(expires) = &material.expires_at else {
        return true;
    };
    let Ok(expires) = humantime::parse_rfc3339(expires) else {
        return false;
    };
    let keep = ttl / 2;
    expires
        .duration_since(SystemTime::now())
        .is_ok_and(|left| left > keep)
}
