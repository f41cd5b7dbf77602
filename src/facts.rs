//! Host facts: what this machine is, gathered once per run.
//!
//! File-backed facts (`/proc`, `/sys`, `/etc/os-release`, `/run/systemd/system`) are read
//! through the rooted [`Host`], so tests and image baking supply them as files; the rest
//! (interface addresses, CPUs, memory, arch, effective uid) come from sysinfo and nix.
//! `--facts FILE` replaces all of it with a JSON document, for planning another machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::{Host, HostError};

/// One address on one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: IpAddr,
}

/// One active swap area from `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapArea {
    pub path: String,
    pub kind: String,
    pub size_kib: u64,
}

/// Everything bootstrap decides from about this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    pub hostname: String,
    pub addresses: Vec<InterfaceAddress>,
    /// The address of the interface that holds the default route.
    pub default_address: Option<IpAddr>,
    /// Go-style architecture name (`amd64`, `arm64`), as cluster images use.
    pub arch: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    /// Free bytes on the file system holding `/var/lib`.
    pub disk_free_bytes: u64,
    pub kernel: String,
    pub os_release: BTreeMap<String, String>,
    pub swap: Vec<SwapArea>,
    pub cgroup_v2: bool,
    /// Loaded or built-in kernel modules.
    pub modules: BTreeSet<String>,
    /// `net.ipv4.ip_forward`; `None` when it cannot be read.
    pub ip_forward: Option<bool>,
    /// Whether systemd is the running init (`/run/systemd/system` exists).
    pub systemd: bool,
    /// Whether we run with effective uid 0.
    pub root: bool,
    /// TCP ports something listens on (from `/proc/net/tcp` and `tcp6`).
    pub listening_ports: BTreeSet<u16>,
}

/// Why facts could not be gathered or loaded.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("cannot read facts file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("facts file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Maps Rust's architecture names to the ones cluster images use.
pub fn go_arch(rust_arch: &str) -> String {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
    .to_owned()
}

impl Facts {
    /// Reads facts from a JSON file (a path on this machine).
    pub fn load(path: &Path) -> Result<Facts, FactsError> {
        let text = std::fs::read_to_string(path).map_err(|source| FactsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| FactsError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Gathers facts from the host.
    pub fn gather(host: &dyn Host) -> Result<Facts, FactsError> {
        let text =
            |p: &str| -> Result<Option<String>, HostError> { host.read_string(Path::new(p)) };

        let hostname = match text("/proc/sys/kernel/hostname")? {
            Some(h) => h.trim().to_owned(),
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let addresses = interface_addresses();
        let default_interface = text("/proc/net/route")?.and_then(|t| default_route_interface(&t));
        let default_address = default_interface
            .and_then(|iface| {
                addresses
                    .iter()
                    .find(|a| a.interface == iface && a.address.is_ipv4())
                    .map(|a| a.address)
            })
            .or_else(|| {
                addresses
                    .iter()
                    .find(|a| !a.address.is_loopback() && !is_link_local(&a.address))
                    .map(|a| a.address)
            });
        let kernel = match text("/proc/sys/kernel/osrelease")? {
            Some(k) => k.trim().to_owned(),
            None => nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let memory_bytes = match text("/proc/meminfo")?.and_then(|t| meminfo_total(&t)) {
            Some(bytes) => bytes,
            None => {
                let mut sys = sysinfo::System::new();
                sys.refresh_memory();
                sys.total_memory()
            }
        };
        let mut modules: BTreeSet<String> = text("/proc/modules")?
            .map(|t| parse_modules(&t))
            .unwrap_or_default();
        if let Some(names) = host.list_dir(Path::new("/sys/module"))? {
            modules.extend(names);
        }
        let mut listening_ports = BTreeSet::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Some(t) = text(table)? {
                listening_ports.extend(parse_listening_ports(&t));
            }
        }
        Ok(Facts {
            hostname,
            addresses,
            default_address,
            arch: go_arch(std::env::consts::ARCH),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or_else(|_| sysinfo::System::new_all().cpus().len().max(1)),
            memory_bytes,
            disk_free_bytes: host.free_space(Path::new("/var/lib"))?,
            kernel,
            os_release: text("/etc/os-release")?
                .map(|t| parse_os_release(&t))
                .unwrap_or_default(),
            swap: text("/proc/swaps")?
                .map(|t| parse_swaps(&t))
                .unwrap_or_default(),
            cgroup_v2: host.exists(Path::new("/sys/fs/cgroup/cgroup.controllers"))?,
            modules,
            ip_forward: text("/proc/sys/net/ipv4/ip_forward")?.map(|t| t.trim() == "1"),
            systemd: host.exists(Path::new("/run/systemd/system"))?,
            root: nix::unistd::geteuid().is_root(),
            listening_ports,
        })
    }

    /// Whether `candidate` (an address or a name) names this host.
    pub fn is_me(&self, candidate: &str) -> bool {
        match candidate.parse::<IpAddr>() {
            Ok(ip) => self.addresses.iter().any(|a| a.address == ip),
            Err(_) => candidate.eq_ignore_ascii_case(&self.hostname),
        }
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn interface_addresses() -> Vec<InterfaceAddress> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in addrs {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.push(InterfaceAddress {
            interface: ifa.interface_name,
            address: ip,
        });
    }
    out
}

/// The interface of the IPv4 default route in `/proc/net/route`.
pub fn default_route_interface(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 2 && cols[1] == "00000000").then(|| cols[0].to_owned())
    })
}

fn meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Module names from `/proc/modules`.
pub fn parse_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `KEY=value` pairs of os-release, quotes removed.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// Active swap areas from `/proc/swaps` (header line skipped).
pub fn parse_swaps(text: &str) -> Vec<SwapArea> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 3).then(|| SwapArea {
                path: cols[0].replace("\\040", " "),
                kind: cols[1].to_owned(),
                size_kib: cols[2].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// Ports in state LISTEN (`0A`) from `/proc/net/tcp` or `tcp6`.
pub fn parse_listening_ports(text: &str) -> BTreeSet<u16> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 4 || cols[3] != "0A" {
                return None;
            }
            let port = cols[1].rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    #[test]
    fn parses_proc_files() {
        let route =
            "Iface\tDestination\tGateway\nlo\t0000007F\t00000000\neth0\t00000000\t0102A8C0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth0"));
        let tcp = "  sl  local_address rem_address   st\n   0: 00000000:192B 00000000:0000 0A\n   1: 0100007F:1F90 0100007F:D3A2 01\n";
        assert_eq!(parse_listening_ports(tcp), BTreeSet::from([6443]));
        let swaps = "Filename\tType\tSize\tUsed\tPriority\n/swap.img file 2097148 0 -2\n";
        assert_eq!(parse_swaps(swaps)[0].path, "/swap.img");
        assert_eq!(
            parse_os_release("ID=debian\nVERSION_ID=\"12\"\n")["VERSION_ID"],
            "12"
        );
    }

    #[test]
    fn file_backed_facts_come_through_the_host() {
        let host = FakeHost::new()
            .with_file("/proc/sys/kernel/hostname", "node-a\n")
            .with_file("/proc/sys/net/ipv4/ip_forward", "0\n")
            .with_file("/proc/modules", "overlay 151552 0 - Live 0x0\n")
            .with_file(
                "/proc/swaps",
                "Filename Type Size Used Priority\n/dev/sda2 partition 1024 0 -2\n",
            )
            .with_file("/proc/meminfo", "MemTotal:        2048000 kB\n")
            .with_file("/sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        let facts = Facts::gather(&host).unwrap();
        assert_eq!(facts.hostname, "node-a");
        assert_eq!(facts.ip_forward, Some(false));
        assert!(facts.modules.contains("overlay"));
        assert_eq!(facts.swap.len(), 1);
        assert_eq!(facts.memory_bytes, 2048000 * 1024);
        assert!(facts.cgroup_v2);
        assert!(!facts.systemd);
    }
}
