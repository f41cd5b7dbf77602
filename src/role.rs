//! The node's role: decided from config and host facts, then persisted and kept.
//!
//! Under `role: auto` the host that is `cluster.controllers[0]` initialises, one named
//! later in the list joins as a controller, any other joins as a worker; with no
//! controllers listed the node is a single-node cluster. The first `up` writes the
//! decision to `/var/lib/bootstrap/role.json`; later runs must agree with it, and a node
//! that has begun a join never initialises a cluster of its own.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Config, RoleSetting};
use crate::facts::Facts;
use crate::host::{Host, HostError};
use crate::state;

/// What this node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The first controller: creates the cluster.
    InitController,
    /// A further controller: joins the control plane.
    JoinController,
    /// A worker: joins as a node.
    Worker,
}

impl Role {
    /// Whether the node runs the control plane.
    pub fn is_controller(self) -> bool {
        !matches!(self, Role::Worker)
    }

    /// Whether the node joins an existing cluster.
    pub fn joins(self) -> bool {
        !matches!(self, Role::InitController)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::InitController => "controller (initialises the cluster)",
            Role::JoinController => "controller (joins the control plane)",
            Role::Worker => "worker",
        })
    }
}

/// A role and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDecision {
    pub role: Role,
    pub reason: String,
    /// When it was first persisted (RFC 3339); `None` for a decision not yet written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Set when `cluster.controllers[0]` found its cluster already running (it was
    /// replaced) and joined it: the cluster's id. The config still says "initialise";
    /// this record says why the node did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_existing: Option<String>,
}

/// Why no role could be settled.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("role: this host is {listed}, so it must be a controller, but role is `worker`")]
    ListedWorker { listed: String },
    #[error("this node has already begun joining a cluster ({marker} exists); it will never initialise a new one, but the config now makes it {computed}. Fix cluster.controllers or role, or run `bootstrap reset` to start over")]
    NeverInitAfterJoin { marker: String, computed: Role },
    #[error("this node was set up as {persisted} on {at} ({reason}; recorded in {path}), but the config now makes it {computed}. Restore the old settings, or run `bootstrap reset` to start over")]
    Conflict {
        persisted: Role,
        at: String,
        reason: String,
        path: String,
        computed: Role,
    },
    #[error("{path}: unreadable role record: {message}")]
    BadRecord { path: String, message: String },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// Decides the role from config and facts alone.
pub fn decide(config: &Config, facts: &Facts) -> Result<RoleDecision, RoleError> {
    let controllers = &config.cluster.controllers;
    let node_name = config.node.name.as_deref();
    let position = controllers.iter().position(|c| {
        facts.is_me(c)
            || Some(c.as_str()) == node_name
            || config.node.address.map(|a| a.to_string()).as_deref() == Some(c.as_str())
    });
    let decision = |role, reason: String| {
        Ok(RoleDecision {
            role,
            reason,
            decided_at: None,
            joined_existing: None,
        })
    };
    if controllers.is_empty() {
        return decision(
            Role::InitController,
            "no controllers listed: a single-node cluster".to_owned(),
        );
    }
    match (config.role, position) {
        (RoleSetting::Worker, Some(i)) => Err(RoleError::ListedWorker {
            listed: format!("cluster.controllers[{i}] ({})", controllers[i]),
        }),
        (_, Some(0)) => decision(
            Role::InitController,
            format!("this host is cluster.controllers[0] ({})", controllers[0]),
        ),
        (_, Some(i)) => decision(
            Role::JoinController,
            format!("this host is cluster.controllers[{i}] ({})", controllers[i]),
        ),
        (RoleSetting::Controller, None) => decision(
            Role::JoinController,
            "role is `controller` and this host is not cluster.controllers[0]".to_owned(),
        ),
        (RoleSetting::Worker, None) => decision(Role::Worker, "role is `worker`".to_owned()),
        (RoleSetting::Auto, None) => decision(
            Role::Worker,
            "this host is not in cluster.controllers".to_owned(),
        ),
    }
}

/// The persisted decision, if any.
pub fn load(host: &dyn Host) -> Result<Option<RoleDecision>, RoleError> {
    let path = Path::new(state::ROLE_FILE);
    let Some(bytes) = host.read(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RoleError::BadRecord {
            path: state::ROLE_FILE.to_owned(),
            message: e.to_string(),
        })
}

/// Decides the role and checks it against what was persisted; with `persist`, writes a
/// first decision to disk.
pub fn resolve(
    host: &dyn Host,
    config: &Config,
    facts: &Facts,
    persist: bool,
) -> Result<RoleDecision, RoleError> {
    let computed = decide(config, facts)?;
    match load(host)? {
        Some(persisted) if persisted.role == computed.role => Ok(persisted),
        Some(persisted)
            if persisted.joined_existing.is_some()
                && persisted.role == Role::JoinController
                && computed.role == Role::InitController =>
        {
            Ok(persisted)
        }
        Some(persisted) if persisted.role.joins() && !computed.role.joins() => {
            Err(RoleError::NeverInitAfterJoin {
                marker: state::ROLE_FILE.to_owned(),
                computed: computed.role,
            })
        }
        Some(persisted) => Err(RoleError::Conflict {
            persisted: persisted.role,
            at: persisted.decided_at.unwrap_or_default(),
            reason: persisted.reason,
            path: state::ROLE_FILE.to_owned(),
            computed: computed.role,
        }),
        None => {
            if !computed.role.joins() && host.exists(Path::new(state::JOIN_STARTED_FILE))? {
                return Err(RoleError::NeverInitAfterJoin {
                    marker: state::JOIN_STARTED_FILE.to_owned(),
                    computed: computed.role,
                });
            }
            if !computed.role.joins() && host.exists(Path::new(state::CLUSTER_FILE))? {
                return Err(RoleError::NeverInitAfterJoin {
                    marker: state::CLUSTER_FILE.to_owned(),
                    computed: computed.role,
                });
            }
            if !persist {
                return Ok(computed);
            }
            record(host, computed)
        }
    }
}

/// Persists a first decision.
pub fn record(host: &dyn Host, decision: RoleDecision) -> Result<RoleDecision, RoleError> {
    let decision = RoleDecision {
        decided_at: Some(state::now_rfc3339()),
        ..decision
    };
    let json = serde_json::to_vec_pretty(&decision).unwrap_or_default();
    host.write_atomic(Path::new(state::ROLE_FILE), &json, 0o600, None)?;
    log::info!("role decided: {} ({})", decision.role, decision.reason);
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::InterfaceAddress;
    use crate::host::FakeHost;

    fn facts(addr: &str, hostname: &str) -> Facts {
        Facts {
            hostname: hostname.to_owned(),
            addresses: vec![
                InterfaceAddress {
                    interface: "lo".into(),
                    address: "127.0.0.1".parse().unwrap(),
                },
                InterfaceAddress {
                    interface: "eth0".into(),
                    address: addr.parse().unwrap(),
                },
            ],
            default_address: Some(addr.parse().unwrap()),
            arch: "amd64".into(),
            cpus: 4,
            memory_bytes: 8 << 30,
            disk_free_bytes: 100 << 30,
            kernel: "6.1.0".into(),
            os_release: Default::default(),
            swap: vec![],
            cgroup_v2: true,
            modules: Default::default(),
            ip_forward: Some(true),
            systemd: true,
            root: true,
            listening_ports: Default::default(),
        }
    }

    fn config(role: RoleSetting, controllers: &[&str]) -> Config {
        let mut c = Config::default();
        c.role = role;
        c.cluster.controllers = controllers.iter().map(|s| s.to_string()).collect();
        c
    }

    const CTRL: [&str; 3] = ["10.0.0.10", "10.0.0.11", "cp-3"];

    #[test]
    fn decision_table() {
        use Role::{InitController, JoinController};
        use RoleSetting::{Auto, Controller};
        const W: Role = Role::Worker;
        const SW: RoleSetting = RoleSetting::Worker;
        type Case<'a> = (RoleSetting, &'a [&'a str], &'a str, &'a str, Option<Role>);
        let cases: &[Case] = &[
            (Auto, &[], "10.0.0.99", "solo", Some(InitController)),
            (Controller, &[], "10.0.0.99", "solo", Some(InitController)),
            (Auto, &CTRL, "10.0.0.10", "cp-1", Some(InitController)),
            (Auto, &CTRL, "10.0.0.11", "cp-2", Some(JoinController)),
            (Auto, &CTRL, "10.0.0.12", "cp-3", Some(JoinController)),
            (Auto, &CTRL, "10.0.0.50", "w-1", Some(W)),
            (Controller, &CTRL, "10.0.0.50", "cp-4", Some(JoinController)),
            (Controller, &CTRL, "10.0.0.10", "cp-1", Some(InitController)),
            (SW, &CTRL, "10.0.0.50", "w-1", Some(W)),
            (SW, &CTRL, "10.0.0.10", "cp-1", None),
            (SW, &CTRL, "10.0.0.12", "cp-3", None),
        ];
        for (setting, controllers, addr, name, want) in cases {
            let got = decide(&config(*setting, controllers), &facts(addr, name));
            match want {
                Some(role) => assert_eq!(got.unwrap().role, *role, "{setting:?} {addr} {name}"),
                None => assert!(got.is_err(), "{setting:?} {addr} {name}"),
            }
        }
    }

    #[test]
    fn node_name_in_config_also_matches() {
        let mut c = config(RoleSetting::Auto, &["10.0.0.10", "edge-cp"]);
        c.node.name = Some("edge-cp".into());
        assert_eq!(
            decide(&c, &facts("10.9.9.9", "x")).unwrap().role,
            Role::JoinController
        );
    }

    #[test]
    fn first_decision_is_persisted_and_kept() {
        let host = FakeHost::new();
        let f = facts("10.0.0.11", "cp-2");
        let d = resolve(&host, &config(RoleSetting::Auto, &CTRL), &f, false).unwrap();
        assert_eq!(d.role, Role::JoinController);
        assert!(
            host.file(state::ROLE_FILE).is_none(),
            "plan must not persist"
        );
        resolve(&host, &config(RoleSetting::Auto, &CTRL), &f, true).unwrap();
        let saved = load(&host).unwrap().unwrap();
        assert_eq!(saved.role, Role::JoinController);
        assert!(saved.decided_at.is_some());
        // Same inputs again: same answer, record untouched.
        let again = resolve(&host, &config(RoleSetting::Auto, &CTRL), &f, true).unwrap();
        assert_eq!(again, saved);
    }

    #[test]
    fn a_joined_node_never_initialises() {
        let host = FakeHost::new();
        let f = facts("10.0.0.11", "cp-2");
        resolve(&host, &config(RoleSetting::Auto, &CTRL), &f, true).unwrap();
        // The config now lists this host first: it would initialise. Refused.
        let moved = config(RoleSetting::Auto, &["10.0.0.11", "10.0.0.10"]);
        let err = resolve(&host, &moved, &f, true).unwrap_err();
        assert!(matches!(err, RoleError::NeverInitAfterJoin { .. }), "{err}");
        // Even without the role record, the join-started marker forbids init.
        let host = FakeHost::new().with_file(state::JOIN_STARTED_FILE, "");
        let err = resolve(&host, &moved, &f, true).unwrap_err();
        assert!(err.to_string().contains("join-started"), "{err}");
        // A single-node config on a node that began a join is refused too.
        let err = resolve(&host, &Config::default(), &f, true).unwrap_err();
        assert!(matches!(err, RoleError::NeverInitAfterJoin { .. }), "{err}");
    }

    #[test]
    fn other_changes_are_reported_as_conflicts() {
        let host = FakeHost::new();
        let f = facts("10.0.0.50", "w-1");
        resolve(&host, &config(RoleSetting::Auto, &CTRL), &f, true).unwrap();
        let err = resolve(&host, &config(RoleSetting::Controller, &CTRL), &f, true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("was set up as worker"), "{text}");
        assert!(text.contains("bootstrap reset"), "{text}");
    }
}
