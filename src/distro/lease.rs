//! The control-plane join lease, kept in the cluster: a `coordination.k8s.io/v1` Lease in
//! `kube-system`, read and written with the distro's kubectl and this controller's admin
//! kubeconfig. Every controller's join service grants from the same lease, so controller
//! joins go one at a time whichever controller is asked, and a holder that dies leaves a
//! lease that lapses by itself. Writes carry the `resourceVersion` read, so two join
//! services granting at once cannot both win.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::Distro;
use crate::host::Host;
use crate::secret::Secret;

/// The Lease's name.
pub const NAME: &str = "bootstrap-control-plane-join";
/// Its namespace.
pub const NAMESPACE: &str = "kube-system";

/// The lease, as one controller reaches it.
pub struct ClusterLease<'a> {
    pub host: &'a dyn Host,
    pub driver: &'a dyn Distro,
    /// How long a grant lasts unless released.
    pub duration: Duration,
}

/// A Lease object of `kube-system`, read and written through a controller's kubectl.
pub(crate) struct LeaseStore<'a> {
    pub host: &'a dyn Host,
    pub driver: &'a dyn Distro,
    pub name: &'static str,
}

impl LeaseStore<'_> {
    fn kubectl(&self, args: &[&str]) -> crate::host::CommandSpec {
        self.driver
            .kubectl(self.driver.admin_kubeconfig())
            .args(args.iter().copied())
            .args(["-n", NAMESPACE])
            .timeout(Duration::from_secs(20))
    }

    /// The stored Lease, `None` when there is none yet.
    pub(crate) fn get(&self) -> Result<Option<Value>, String> {
        let name = self.name;
        let output = self
            .host
            .run(&self.kubectl(&["get", "lease", name, "-o", "json"]))
            .map_err(|e| e.to_string())?;
        if output.success() {
            return serde_json::from_slice(&output.stdout)
                .map(Some)
                .map_err(|e| format!("lease {NAMESPACE}/{name}: unreadable: {e}"));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("(NotFound)") {
            return Ok(None);
        }
        Err(format!(
            "cannot read lease {NAMESPACE}/{name}: {}",
            stderr.trim()
        ))
    }

    /// Creates `lease`, or replaces it when it carries the `resourceVersion` read (a
    /// write that lost a race fails with "contended").
    pub(crate) fn write(&self, lease: &Value) -> Result<(), String> {
        let verb = if lease["metadata"]["resourceVersion"].is_string() {
            "replace"
        } else {
            "create"
        };
        let command = self
            .kubectl(&[verb, "-f", "-"])
            .stdin(Secret::new(lease.to_string()));
        let output = self.host.run(&command).map_err(|e| e.to_string())?;
        if output.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("(Conflict)") || stderr.contains("(AlreadyExists)") {
            // Nobody is named: the write lost a race.
            return Err(format!(
                "lease {NAMESPACE}/{} contended: another join service wrote it just now; ask again",
                self.name
            ));
        }
        Err(format!(
            "cannot write lease {NAMESPACE}/{}: {}",
            self.name,
            stderr.trim()
        ))
    }
}

impl ClusterLease<'_> {
    fn store(&self) -> LeaseStore<'_> {
        LeaseStore {
            host: self.host,
            driver: self.driver,
            name: NAME,
        }
    }

    fn get(&self) -> Result<Option<Value>, String> {
        self.store().get()
    }

    /// Gives the lease to `holder` (again, if it holds it); `Err` names the holder, or
    /// why the lease cannot be read.
    pub fn acquire(&self, holder: &str) -> Result<(), String> {
        let now = SystemTime::now();
        let current = self.get()?;
        if let Some(lease) = &current {
            if let Some((other, left)) = held_by_another(lease, holder, now) {
                return Err(format!(
                    "admission busy: {other} is joining the control plane (lease for {} s more)",
                    left.as_secs()
                ));
            }
        }
        let version = current
            .as_ref()
            .and_then(|l| l["metadata"]["resourceVersion"].as_str())
            .map(str::to_owned);
        let mut lease = document(Some(holder), now, self.duration);
        if let Some(version) = version {
            lease["metadata"]["resourceVersion"] = json!(version);
        }
        self.store().write(&lease)
    }

    /// Who holds the lease now (a lapsed grant counts as nobody).
    pub fn holder(&self) -> Result<Option<String>, String> {
        let Some(lease) = self.get()? else {
            return Ok(None);
        };
        Ok(held_by_another(&lease, "", SystemTime::now()).map(|(holder, _)| holder))
    }

    /// Ends `holder`'s lease (a no-op for anyone else); `Ok(true)` when it did.
    pub fn release(&self, holder: &str) -> Result<bool, String> {
        let Some(current) = self.get()? else {
            return Ok(false);
        };
        if current["spec"]["holderIdentity"].as_str() != Some(holder) {
            return Ok(false);
        }
        let mut lease = document(None, SystemTime::now(), self.duration);
        lease["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        self.store().write(&lease).map(|()| true)
    }
}

/// The Lease object (no holder: released).
fn document(holder: Option<&str>, now: SystemTime, duration: Duration) -> Value {
    let time = humantime::format_rfc3339_micros(now).to_string();
    let mut spec = json!({"leaseDurationSeconds": duration.as_secs()});
    if let Some(holder) = holder {
        spec["holderIdentity"] = json!(holder);
        spec["acquireTime"] = json!(time);
        spec["renewTime"] = json!(time);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": spec,
    })
}

/// Another holder whose grant has not lapsed, and how long it has left.
fn held_by_another(lease: &Value, me: &str, now: SystemTime) -> Option<(String, Duration)> {
    let spec = &lease["spec"];
    let holder = spec["holderIdentity"].as_str().filter(|h| !h.is_empty())?;
    if holder == me {
        return None;
    }
    let renewed = spec["renewTime"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())?;
    let seconds = spec["leaseDurationSeconds"].as_u64().unwrap_or(0);
    let until = renewed + Duration::from_secs(seconds);
    until
        .duration_since(now)
        .ok()
        .filter(|left| !left.is_zero())
        .map(|left| (holder.to_owned(), left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_binds_until_it_lapses_and_never_its_own_holder() {
        let now = SystemTime::now();
        let lease = document(Some("c2"), now, Duration::from_secs(900));
        let (holder, left) = held_by_another(&lease, "c3", now).unwrap();
        assert_eq!(holder, "c2");
        assert!(left > Duration::from_secs(890), "{left:?}");
        assert!(held_by_another(&lease, "c2", now).is_none());
        let later = now + Duration::from_secs(901);
        assert!(held_by_another(&lease, "c3", later).is_none());
        let released = document(None, now, Duration::from_secs(900));
        assert!(held_by_another(&released, "c3", now).is_none());
    }
}
