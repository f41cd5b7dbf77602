//! bootstrap's own state on the host: where it lives, and the success and failure markers.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::host::{Host, HostError};

/// The state folder (mode 0700).
pub const STATE_DIR: &str = "/var/lib/bootstrap";
/// The persisted role decision.
pub const ROLE_FILE: &str = "/var/lib/bootstrap/role.json";
/// Written before the first join step; a node with it never initialises a cluster.
pub const JOIN_STARTED_FILE: &str = "/var/lib/bootstrap/join-started";
/// Step-by-step progress of `up`.
pub const JOURNAL_FILE: &str = "/var/lib/bootstrap/journal.json";
/// Written when `up` succeeds.
pub const DONE_FILE: &str = "/var/lib/bootstrap/done.json";
/// Written when `up` fails; removed by the next success.
pub const FAILED_FILE: &str = "/var/lib/bootstrap/failed.json";
/// One `up` at a time.
pub const LOCK_FILE: &str = "/var/lib/bootstrap/lock";
/// The cluster this node belongs to, recorded once it has initialised or joined one.
pub const CLUSTER_FILE: &str = "/var/lib/bootstrap/cluster.json";
/// Whether this controller leads the control plane's move to a version (`upgrade`),
/// decided once per version so a resumed upgrade runs the same commands.
pub const UPGRADE_LEAD_FILE: &str = "/var/lib/bootstrap/upgrade-lead.json";
/// The Cluster API bootstrap success sentinel.
pub const CAPI_SENTINEL: &str = "/run/cluster-api/bootstrap-success.complete";

/// Now, as RFC 3339 UTC with seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What the done marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneMarker {
    pub at: String,
    pub bootstrap_version: String,
    pub role: String,
    pub distro: String,
    pub distro_version: String,
    pub steps: usize,
}

/// The cluster record: which cluster this node belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Chosen by the controller that initialised the cluster; carried in join material.
    pub id: String,
    pub distro: String,
    /// When this node joined or initialised it (RFC 3339).
    pub since: String,
}

/// What the failure marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMarker {
    pub at: String,
    /// The step that failed, when the failure happened in one.
    pub step: Option<String>,
    pub error: String,
    pub exit_code: i32,
    /// The signal that stopped the run (`SIGTERM`, `SIGINT`), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// Creates the state folder with mode 0700.
pub fn ensure_dir(host: &dyn Host) -> Result<(), HostError> {
    host.create_dir_all(Path::new(STATE_DIR), 0o700)
}

/// Reads a JSON marker; `None` when absent or unreadable (status reports it as absent).
pub fn read_json<T: for<'de> Deserialize<'de>>(host: &dyn Host, path: &str) -> Option<T> {
    let bytes = host.read(Path::new(path)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Writes a JSON document atomically with mode 0600.
pub fn write_json<T: Serialize>(host: &dyn Host, path: &str, value: &T) -> Result<(), HostError> {
    let mut json = serde_json::to_vec_pretty(value).unwrap_or_default();
    json.push(b'\n');
    host.write_atomic(Path::new(path), &json, 0o600, None)
}
