//! bootstrap: brings up one node of a k3s, k0s or kubeadm cluster from a cluster image.
//!
//! The binary is a thin `main` over [`app::run`]; everything that touches the machine
//! goes through [`host::Host`], and every change is a step of a [`plan::Plan`].

pub mod api_proxy;
pub mod app;
pub mod cli;
pub mod config;
pub mod containerd;
pub mod distro;
pub mod distro_kind;
pub mod duration_serde;
pub mod entropy;
pub mod facts;
pub mod fault;
pub mod host;
pub mod hostprep;
pub mod http;
pub mod images;
pub mod interrupt;
pub mod io;
pub mod join;
pub mod lock;
pub mod logging;
pub mod node_plan;
pub mod parsed;
pub mod plan;
pub mod preflight;
pub mod random;
pub mod registry;
pub mod role;
pub mod rootfs;
pub mod secret;
pub mod secret_format;
pub mod state;
pub mod systemd;
pub mod validate;
