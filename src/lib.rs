//! bootstrap: brings up one node of a k3s, k0s or kubeadm cluster from a cluster image.
//!
//! The binary is a thin `main` over [`app::run`]; everything that touches the machine
//! goes through [`host::Host`], and every change is a step of a [`plan::Plan`].

pub mod app;
pub mod cli;
pub mod config;
pub mod distro;
pub mod duration_serde;
pub mod entropy;
pub mod facts;
pub mod host;
pub mod hostprep;
pub mod join;
pub mod lock;
pub mod logging;
pub mod parsed;
pub mod plan;
pub mod preflight;
pub mod random;
pub mod role;
pub mod rootfs;
pub mod runtime;
pub mod secret;
pub mod state;
pub mod validate;
