//! The fleet's upgrade lease, kept in the cluster: who is upgrading now and what each node
//! reported when its upgrade finished, in one `kube-system` Lease every controller's join
//! service grants from. Controllers upgrade one at a time and before any worker; workers
//! follow, `upgrade.max_unavailable` at a time, once every controller has reported the
//! target version. A turn lapses by itself, so a node that dies mid-upgrade holds the
//! others up only until then.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::lease::{LeaseStore, NAMESPACE};
use super::{kube_version, Distro, JoinRole};
use crate::host::Host;

/// The Lease's name.
pub const NAME: &str = "bootstrap-upgrade";
/// The annotation of the Lease that holds the [`Record`], as JSON.
pub const ANNOTATION: &str = "bootstrap/upgrade";
/// How long one node's turn lasts unless it reports back (or asks again, which renews it).
pub const TURN: Duration = Duration::from_secs(20 * 60);

/// One node's turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: JoinRole,
    /// The version it moves to.
    pub target: String,
    /// When the turn lapses, in seconds since the Unix epoch.
    pub until: u64,
}

/// What the lease holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Nodes upgrading now.
    #[serde(default)]
    pub upgrading: BTreeMap<String, Turn>,
    /// The version each node runs, as it reported when its upgrade finished.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
}

/// A node asking for its turn.
pub struct Ask<'a> {
    pub node: &'a str,
    pub role: JoinRole,
    pub target: &'a str,
    /// Every controller of the cluster, by node name.
    pub controllers: &'a [String],
    pub max_workers: u32,
    pub now: u64,
}

/// Whether `version` is at least `target` (build metadata ignored; unreadable: no).
pub fn reaches(version: &str, target: &str) -> bool {
    matches!((kube_version(version), kube_version(target)), (Some(v), Some(t)) if v >= t)
}

impl Record {
    /// Gives `ask.node` its turn (again, if it has it); `Err` says what it waits for.
    pub fn grant(&mut self, ask: &Ask<'_>) -> Result<(), String> {
        self.upgrading.retain(|_, turn| turn.until > ask.now);
        let turn = Turn {
            role: ask.role,
            target: ask.target.to_owned(),
            until: ask.now + TURN.as_secs(),
        };
        if self.upgrading.contains_key(ask.node) {
            self.upgrading.insert(ask.node.to_owned(), turn);
            return Ok(());
        }
        let busy = |role: Option<JoinRole>| -> Vec<&str> {
            self.upgrading
                .iter()
                .filter(|(_, t)| role.is_none_or(|r| t.role == r))
                .map(|(n, _)| n.as_str())
                .collect()
        };
        let controllers_busy = busy(Some(JoinRole::Controller));
        if !controllers_busy.is_empty() {
            return Err(format!(
                "waiting: {} is upgrading",
                controllers_busy.join(", ")
            ));
        }
        match ask.role {
            JoinRole::Controller => {
                // A controller waits for workers still on their way too: the skew rules
                // hold only while no worker is ahead of any controller.
                let workers = busy(None);
                if !workers.is_empty() {
                    return Err(format!("waiting: {} is upgrading", workers.join(", ")));
                }
            }
            JoinRole::Worker => {
                if ask.controllers.is_empty() {
                    // A cluster always has one: an empty list is a list not read right.
                    return Err("waiting: the cluster lists no controllers yet".into());
                }
                for controller in ask.controllers {
                    match self.versions.get(controller) {
                        Some(v) if reaches(v, ask.target) => {}
                        Some(v) => {
                            return Err(format!(
                                "waiting: controller {controller} runs {v}, not yet {}; workers follow the controllers",
                                ask.target
                            ))
                        }
                        None => {
                            return Err(format!(
                                "waiting: controller {controller} has not upgraded to {} yet; workers follow the controllers",
                                ask.target
                            ))
                        }
                    }
                }
                let workers = busy(Some(JoinRole::Worker));
                if workers.len() >= ask.max_workers.max(1) as usize {
                    return Err(format!(
                        "waiting: {} is upgrading (upgrade.max_unavailable is {})",
                        workers.join(", "),
                        ask.max_workers
                    ));
                }
            }
        }
        self.upgrading.insert(ask.node.to_owned(), turn);
        Ok(())
    }

    /// Ends `node`'s turn: it now runs `version`.
    pub fn finish(&mut self, node: &str, version: &str) {
        self.upgrading.remove(node);
        self.versions.insert(node.to_owned(), version.to_owned());
    }
}

/// The lease, as one controller reaches it.
pub struct UpgradeLease<'a> {
    pub host: &'a dyn Host,
    pub driver: &'a dyn Distro,
}

impl UpgradeLease<'_> {
    fn store(&self) -> LeaseStore<'_> {
        LeaseStore {
            host: self.host,
            driver: self.driver,
            name: NAME,
        }
    }

    /// The record, and the Lease it came from (`None` before the first upgrade).
    pub fn read(&self) -> Result<(Record, Option<Value>), String> {
        let Some(lease) = self.store().get()? else {
            return Ok((Record::default(), None));
        };
        let record = match lease["metadata"]["annotations"][ANNOTATION].as_str() {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                format!("lease {NAMESPACE}/{NAME}: annotation {ANNOTATION} is unreadable: {e}")
            })?,
            None => Record::default(),
        };
        Ok((record, Some(lease)))
    }

    /// Reads the record, lets `change` act on it, and writes it back only if it changed;
    /// a write that raced another join service fails (the caller asks again).
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Record) -> Result<T, String>,
    ) -> Result<T, String> {
        let (mut record, lease) = self.read()?;
        let before = record.clone();
        let out = change(&mut record)?;
        if record == before && lease.is_some() {
            return Ok(out);
        }
        let text = serde_json::to_string(&record).map_err(|e| e.to_string())?;
        let mut doc = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "annotations": {ANNOTATION: text},
            },
            // Shown by `kubectl get lease`: one of the nodes upgrading now.
            "spec": {"leaseDurationSeconds": TURN.as_secs()},
        });
        if let Some(holder) = record.upgrading.keys().next() {
            doc["spec"]["holderIdentity"] = json!(holder);
        }
        if let Some(version) = lease
            .as_ref()
            .and_then(|l| l["metadata"]["resourceVersion"].as_str())
        {
            doc["metadata"]["resourceVersion"] = json!(version);
        }
        self.store().write(&doc)?;
        Ok(out)
    }

    /// Gives `ask.node` its turn; `Err` says what it waits for.
    pub fn acquire(&self, ask: &Ask<'_>) -> Result<(), String> {
        self.update(|record| record.grant(ask))
    }

    /// Ends `node`'s turn; it runs `version`.
    pub fn finish(&self, node: &str, version: &str) -> Result<(), String> {
        self.update(|record| {
            record.finish(node, version);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "v1.35.2";
    const NEW: &str = "v1.36.3";

    fn ask<'a>(node: &'a str, role: JoinRole, controllers: &'a [String], now: u64) -> Ask<'a> {
        Ask {
            node,
            role,
            target: NEW,
            controllers,
            max_workers: 1,
            now,
        }
    }

    #[test]
    fn controllers_go_one_at_a_time_then_workers_in_batches() {
        let controllers: Vec<String> = ["c1", "c2", "c3"].map(String::from).into();
        let c = &controllers;
        let mut r = Record::default();
        for (i, name) in c.iter().enumerate() {
            r.versions.insert(name.clone(), OLD.into());
            let now = 100 + i as u64;
            // A worker asking before the controllers are done waits, naming why.
            let why = r.grant(&ask("w1", JoinRole::Worker, c, now)).unwrap_err();
            assert!(why.contains("controller c"), "{why}");
            r.grant(&ask(name, JoinRole::Controller, c, now)).unwrap();
            // Asking again renews the turn.
            r.grant(&ask(name, JoinRole::Controller, c, now)).unwrap();
            for other in c.iter().filter(|o| *o != name) {
                let why = r
                    .grant(&ask(other, JoinRole::Controller, c, now))
                    .unwrap_err();
                assert_eq!(why, format!("waiting: {name} is upgrading"));
            }
            let why = r.grant(&ask("w1", JoinRole::Worker, c, now)).unwrap_err();
            assert_eq!(why, format!("waiting: {name} is upgrading"));
            r.finish(name, NEW);
        }
        r.grant(&ask("w1", JoinRole::Worker, c, 200)).unwrap();
        let why = r.grant(&ask("w2", JoinRole::Worker, c, 200)).unwrap_err();
        assert!(
            why.contains("w1 is upgrading (upgrade.max_unavailable is 1)"),
            "{why}"
        );
        // No controller starts another upgrade while a worker is on its way.
        assert!(r.grant(&ask("c1", JoinRole::Controller, c, 200)).is_err());
        let two = Ask {
            max_workers: 2,
            ..ask("w2", JoinRole::Worker, c, 200)
        };
        r.grant(&two).unwrap();
        r.finish("w1", NEW);
        r.finish("w2", NEW);
        assert!(r.upgrading.is_empty());
    }

    #[test]
    fn a_turn_lapses_when_its_node_goes_silent() {
        let controllers: Vec<String> = vec!["c1".into(), "c2".into()];
        let mut r = Record::default();
        r.grant(&ask("c1", JoinRole::Controller, &controllers, 0))
            .unwrap();
        assert!(r
            .grant(&ask(
                "c2",
                JoinRole::Controller,
                &controllers,
                TURN.as_secs() - 1
            ))
            .is_err());
        r.grant(&ask(
            "c2",
            JoinRole::Controller,
            &controllers,
            TURN.as_secs(),
        ))
        .unwrap();
        assert_eq!(r.upgrading.keys().collect::<Vec<_>>(), ["c2"]);
    }

    #[test]
    fn no_worker_goes_while_the_controllers_are_unknown() {
        let mut r = Record::default();
        let why = r.grant(&ask("w1", JoinRole::Worker, &[], 0)).unwrap_err();
        assert!(why.contains("lists no controllers"), "{why}");
    }

    #[test]
    fn a_controller_behind_the_target_holds_the_workers() {
        let controllers: Vec<String> = vec!["c1".into()];
        let mut r = Record::default();
        r.finish("c1", "v1.36.0");
        r.grant(&ask("w1", JoinRole::Worker, &controllers, 0))
            .unwrap_err();
        r.finish("c1", "v1.36.3+k3s1");
        r.grant(&ask("w1", JoinRole::Worker, &controllers, 0))
            .unwrap();
    }
}
