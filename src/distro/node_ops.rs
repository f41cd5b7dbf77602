//! Taking a node out of the cluster with given credentials (cordon, drain, delete): one
//! place for `leave` on the node itself and for the join service acting for a worker.

use std::time::Duration;

use super::{Distro, DistroError};
use crate::host::{CommandSpec, Host, HostError};

/// kubectl against the cluster with one kubeconfig.
pub struct NodeOps<'a> {
    host: &'a dyn Host,
    driver: &'a dyn Distro,
    kubeconfig: String,
}

/// Whether a node is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The API lists it.
    Present,
    /// The API answered NotFound: not a Kubernetes node (a k0s controller without
    /// workloads, or already deleted).
    NotFound,
}

impl<'a> NodeOps<'a> {
    pub fn new(host: &'a dyn Host, driver: &'a dyn Distro, kubeconfig: &str) -> NodeOps<'a> {
        NodeOps {
            host,
            driver,
            kubeconfig: kubeconfig.to_owned(),
        }
    }

    fn kubectl<I, S>(&self, args: I) -> CommandSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<crate::host::Arg>,
    {
        self.driver.kubectl(&self.kubeconfig).args(args)
    }

    /// Whether node `name` exists. Only the API's NotFound means "not a node"; a refused,
    /// unreachable or unauthorised API is an error naming kubectl's own words, so nothing
    /// is skipped on a guess.
    pub fn presence(&self, name: &str) -> Result<Presence, DistroError> {
        let command = self.kubectl(["get", "node", name, "-o", "name"]);
        let output = self.host.run(&command)?;
        if output.success() {
            return Ok(Presence::Present);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("(NotFound)") {
            return Ok(Presence::NotFound);
        }
        Err(HostError::Failed {
            command: command.to_string(),
            status: output.status_text(),
            stderr: stderr.into_owned(),
        }
        .into())
    }

    /// The node named `name`, or else one whose InternalIP is `address`: its name and
    /// whether it is Ready.
    pub fn find(
        &self,
        name: &str,
        address: Option<std::net::IpAddr>,
    ) -> Result<Option<(String, bool)>, DistroError> {
        let command = self.kubectl(["get", "nodes", "-o", "json"]);
        let output = self.host.run_checked(&command)?;
        let list: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|e| DistroError::Cluster {
                what: command.to_string(),
                reason: format!("unreadable node list: {e}"),
            })?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ready = |node: &serde_json::Value| {
            node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        };
        let has_address = |node: &serde_json::Value| {
            address.is_some_and(|a| {
                node["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["type"] == "InternalIP" && x["address"] == a.to_string())
            })
        };
        let by_name = items.iter().find(|n| n["metadata"]["name"] == name);
        let found = by_name.or_else(|| items.iter().find(|n| has_address(n)));
        Ok(found.map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap_or(name).to_owned(),
                ready(n),
            )
        }))
    }

    /// The API server's version (`kubectl version`), as the cluster runs it now.
    pub fn server_version(&self) -> Result<String, DistroError> {
        let (command, doc) = self.kubectl_json(["version", "-o", "json"])?;
        doc["serverVersion"]["gitVersion"]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| DistroError::Cluster {
                what: command.to_string(),
                reason: "names no server version".into(),
            })
    }

    /// Every Node's name and the kubelet version it reports.
    pub fn kubelet_versions(&self) -> Result<Vec<(String, String)>, DistroError> {
        let (_, doc) = self.kubectl_json(["get", "nodes", "-o", "json"])?;
        Ok(doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let name = item["metadata"]["name"].as_str()?;
                let version = item["status"]["nodeInfo"]["kubeletVersion"]
                    .as_str()
                    .unwrap_or_default();
                Some((name.to_owned(), version.to_owned()))
            })
            .collect())
    }

    /// Runs kubectl with `args` and reads what it printed as JSON; also returns the
    /// command, to name it in errors about the document.
    fn kubectl_json<const N: usize>(
        &self,
        args: [&str; N],
    ) -> Result<(CommandSpec, serde_json::Value), DistroError> {
        let command = self.kubectl(args).timeout(Duration::from_secs(30));
        let output = self.host.run_checked(&command)?;
        let doc = serde_json::from_slice(&output.stdout).map_err(|e| DistroError::Cluster {
            what: command.to_string(),
            reason: format!("printed no JSON: {e}"),
        })?;
        Ok((command, doc))
    }

    /// Whether the API server answers `/readyz` (with etcd: its quorum holds).
    pub fn api_ready(&self) -> Result<bool, DistroError> {
        let command = self
            .kubectl(["get", "--raw", "/readyz"])
            .timeout(Duration::from_secs(20));
        Ok(self.host.run(&command)?.success())
    }

    /// Whether node `name` is one of the cluster's controllers.
    pub fn is_controller(&self, name: &str) -> Result<bool, DistroError> {
        Ok(self
            .driver
            .controllers(self.host, &self.kubeconfig)?
            .iter()
            .any(|n| n == name))
    }

    /// `kubectl cordon NAME`.
    pub fn cordon_command(&self, name: &str) -> CommandSpec {
        self.kubectl(["cordon", name])
            .timeout(Duration::from_secs(60))
    }

    /// `kubectl drain NAME` within `timeout`.
    pub fn drain_command(&self, name: &str, timeout: Duration) -> CommandSpec {
        self.kubectl([
            "drain".to_owned(),
            name.to_owned(),
            "--ignore-daemonsets".to_owned(),
            "--delete-emptydir-data".to_owned(),
            "--timeout".to_owned(),
            format!("{}s", timeout.as_secs().max(1)),
        ])
        .timeout(timeout + Duration::from_secs(30))
    }

    /// `kubectl uncordon NAME`.
    pub fn uncordon_command(&self, name: &str) -> CommandSpec {
        self.kubectl(["uncordon", name])
            .timeout(Duration::from_secs(60))
    }

    /// `kubectl delete node NAME`.
    pub fn delete_command(&self, name: &str) -> CommandSpec {
        self.kubectl(["delete", "node", name, "--timeout", "60s"])
            .timeout(Duration::from_secs(90))
    }

    /// Cordons, drains and deletes node `name`; what was done.
    pub fn remove(&self, name: &str, drain_timeout: Duration) -> Result<String, DistroError> {
        if self.presence(name)? == Presence::NotFound {
            return Ok(format!(
                "{name} is not a node of this cluster; nothing to drain or delete"
            ));
        }
        self.host.run_checked(&self.cordon_command(name))?;
        self.host
            .run_checked(&self.drain_command(name, drain_timeout))?;
        self.host.run_checked(&self.delete_command(name))?;
        Ok(format!("cordoned, drained and deleted node {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CommandOutput, FakeHost};

    fn output(code: i32, stderr: &str) -> CommandOutput {
        CommandOutput {
            code: Some(code),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_not_found_means_not_a_node() {
        let driver = super::super::driver(super::super::DistroKind::K3s);
        let cases = [
            (output(0, ""), Some(Presence::Present)),
            (
                output(1, "Error from server (NotFound): nodes \"w1\" not found"),
                Some(Presence::NotFound),
            ),
            (
                output(1, "The connection to the server 10.0.0.1:6443 was refused"),
                None,
            ),
            (
                output(
                    1,
                    "Error from server (Forbidden): nodes \"w1\" is forbidden: User \"system:node:w2\" cannot get resource",
                ),
                None,
            ),
        ];
        for (answer, want) in cases {
            let host = FakeHost::new();
            let reply = answer.clone();
            host.respond(move |_| reply.clone());
            let ops = NodeOps::new(&host, driver, "/etc/kubeconfig");
            match (ops.presence("w1"), want) {
                (Ok(got), Some(want)) => assert_eq!(got, want),
                (Err(e), None) => assert!(
                    e.to_string()
                        .contains(&String::from_utf8_lossy(&answer.stderr).to_string()),
                    "{e}"
                ),
                (got, want) => panic!("{answer:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
