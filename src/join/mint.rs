//! Join material per role, minted on demand and shared: the cache is read without
//! waiting on a mint, one mint per role runs at a time on a thread of its own (outside
//! any lock the others need), callers waiting on it give up at their own deadline while
//! it goes on, and a failed mint is remembered for a few seconds so a crowd of joiners
//! does not run the distro's tool once each.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

/// Why a caller got no material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoMaterial {
    /// A mint is under way and did not end by the caller's deadline; what it makes is
    /// kept (a controller's for that controller), so asking again gets it.
    Minting(String),
    /// The last mint failed, for this reason.
    Failed(String),
}

/// Material minted, and for whom.
struct Minted {
    material: JoinMaterial,
    /// The controller it was minted for; `None`: any worker's.
    for_node: Option<String>,
}

/// What is known for one role.
#[derive(Default)]
struct Slot {
    minted: Option<Minted>,
    /// The last failure, and when.
    failed: Option<(Instant, String)>,
    /// A mint for this role is running.
    minting: bool,
    /// Mints ended so far: a caller that waited on one gets what it made.
    ended: u64,
}

struct Shared {
    minter: Box<dyn Minter>,
    ttl: Duration,
    slots: Mutex<HashMap<JoinRole, Slot>>,
    /// Signalled when a mint ends.
    minted: Condvar,
}

/// Material per role, and the mints under way.
pub struct Materials {
    shared: Arc<Shared>,
}

impl Materials {
    pub fn new(minter: Box<dyn Minter>, ttl: Duration) -> Materials {
        Materials {
            shared: Arc::new(Shared {
                minter,
                ttl,
                slots: Mutex::new(HashMap::new()),
                minted: Condvar::new(),
            }),
        }
    }

    /// Material for `role` asked for by `node`: a worker's reused while more than half
    /// its life remains; a controller's minted for that controller and handed to it once.
    /// Minted when there is none, by a mint this call starts or the one already under
    /// way, waited for until `deadline`.
    pub fn get(
        &self,
        role: JoinRole,
        node: &str,
        deadline: Instant,
    ) -> Result<JoinMaterial, NoMaterial> {
        let shared = &self.shared;
        let mut slots = shared.slots();
        // `ended` when this caller began to wait on a mint.
        let mut waiting_since: Option<u64> = None;
        loop {
            let slot = slots.entry(role).or_default();
            if waiting_since.is_some_and(|since| slot.ended > since) {
                // The mint waited on is over: what it made (or why not) is the answer,
                // however short its token's life; unless it was another controller's.
                if let Some((_, why)) = &slot.failed {
                    return Err(NoMaterial::Failed(why.clone()));
                }
                if let Some(material) = take_if_for(slot, node) {
                    return Ok(material);
                }
                waiting_since = None;
            }
            if let Some(material) = usable(slot, node, shared.ttl) {
                return Ok(material);
            }
            if let Some((at, why)) = &slot.failed {
                if at.elapsed() < FAILURE_MEMORY {
                    return Err(NoMaterial::Failed(why.clone()));
                }
            }
            if !slot.minting {
                slot.minting = true;
                slot.failed = None;
                if let Err(e) = start_mint(shared.clone(), role, node) {
                    slot.minting = false;
                    return Err(NoMaterial::Failed(format!(
                        "cannot start minting join material: {e}"
                    )));
                }
            }
            waiting_since.get_or_insert(slot.ended);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoMaterial::Minting(format!(
                    "join material for a {role} {}",
                    super::proto::STILL_MINTING
                )));
            }
            slots = shared
                .minted
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, HashMap<JoinRole, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs one mint for `role` (asked for by `node`) on a thread of its own: the distro's
/// tool may take longer than the caller waits, and what it makes is kept either way.
fn start_mint(shared: Arc<Shared>, role: JoinRole, node: &str) -> std::io::Result<()> {
    let for_node = (role == JoinRole::Controller).then(|| node.to_owned());
    std::thread::Builder::new()
        .name(format!("mint-{role}"))
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shared.minter.mint(role, shared.ttl)
            }))
            .unwrap_or_else(|_| Err("minting failed unexpectedly".into()));
            let mut slots = shared.slots();
            let slot = slots.entry(role).or_default();
            slot.minting = false;
            slot.ended += 1;
            match result {
                Ok(material) => slot.minted = Some(Minted { material, for_node }),
                Err(why) => slot.failed = Some((Instant::now(), why)),
            }
            shared.minted.notify_all();
        })
        .map(drop)
}

/// The slot's material if `node` may have it now and it is still fresh.
fn usable(slot: &mut Slot, node: &str, ttl: Duration) -> Option<JoinMaterial> {
    if !still_fresh(&slot.minted.as_ref()?.material, ttl) {
        return None;
    }
    take_if_for(slot, node)
}

/// The slot's material if it is `node`'s: a worker's is anyone's (and stays for the
/// next); a controller's only the controller's it was minted for, and taken (that
/// controller's next join mints its own). With every controller minting, the
/// control-plane certificates kubeadm keeps are the ones the *last* mint uploaded, with
/// that mint's key, so material from an earlier mint may no longer open them (and
/// controller joins are rare and one at a time).
fn take_if_for(slot: &mut Slot, node: &str) -> Option<JoinMaterial> {
    match &slot.minted.as_ref()?.for_node {
        None => slot.minted.as_ref().map(|m| m.material.clone()),
        Some(owner) if owner == node => slot.minted.take().map(|m| m.material),
        Some(_) => None,
    }
}

/// Whether material may be handed out: more than half its life left.
fn still_fresh(material: &JoinMaterial, ttl: Duration) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Mints numbered k3s material, each mint taking `delay`.
    struct Counting {
        calls: Arc<AtomicUsize>,
        delay: Duration,
    }

    impl Minter for Counting {
        fn mint(&self, role: JoinRole, _ttl: Duration) -> Result<JoinMaterial, String> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(self.delay);
            let text = format!(
                r#"{{"format":1,"distro":"k3s","version":"v1.31.4+k3s1","role":"{role}","endpoint":"10.0.0.1:6443","token":"K10mint{n}::server:x"}}"#
            );
            JoinMaterial::parse(&text, "test").map_err(|e| e.to_string())
        }
    }

    fn materials(delay: Duration) -> (Materials, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let minter = Counting {
            calls: calls.clone(),
            delay,
        };
        (
            Materials::new(Box::new(minter), Duration::from_secs(3600)),
            calls,
        )
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn a_controllers_material_outlives_its_callers_wait_and_goes_to_it_alone() {
        let (materials, calls) = materials(Duration::from_millis(300));
        let gave_up = materials.get(JoinRole::Controller, "cp-1", soon(20));
        assert!(
            matches!(&gave_up, Err(NoMaterial::Minting(m)) if m.ends_with(crate::join::proto::STILL_MINTING)),
            "{gave_up:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        // Another controller does not get it: it mints its own.
        let other = materials
            .get(JoinRole::Controller, "cp-2", soon(5_000))
            .unwrap();
        assert_eq!(other.token.expose(), "K10mint2::server:x");
        // cp-1's was replaced by that later mint (only the last one's kubeadm key opens
        // the uploaded certificates), so cp-1 gets a mint of its own, once.
        let mine = materials
            .get(JoinRole::Controller, "cp-1", soon(5_000))
            .unwrap();
        assert_eq!(mine.token.expose(), "K10mint3::server:x");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_controller_that_asked_gets_the_mint_it_gave_up_on_without_a_second_one() {
        let (materials, calls) = materials(Duration::from_millis(300));
        assert!(materials
            .get(JoinRole::Controller, "cp-1", soon(20))
            .is_err());
        let material = materials
            .get(JoinRole::Controller, "cp-1", soon(5_000))
            .unwrap();
        assert_eq!(material.token.expose(), "K10mint1::server:x");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Handed out once: the next join mints anew.
        materials
            .get(JoinRole::Controller, "cp-1", soon(5_000))
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn workers_share_one_mint_started_by_a_caller_that_gave_up() {
        let (materials, calls) = materials(Duration::from_millis(200));
        assert!(matches!(
            materials.get(JoinRole::Worker, "w1", soon(10)),
            Err(NoMaterial::Minting(_))
        ));
        let a = materials.get(JoinRole::Worker, "w2", soon(5_000)).unwrap();
        let b = materials.get(JoinRole::Worker, "w3", soon(5_000)).unwrap();
        assert_eq!(a, b);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
