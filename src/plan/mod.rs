//! Plans: ordered, typed steps computed purely from config, facts and the cluster image.
//!
//! `plan` prints a [`Plan`]; `up` applies it through [`apply`]. Each step can tell
//! whether it is already in place ([`check`]), and the [`journal`] records progress so a
//! failed or killed run resumes at the step that did not finish.

pub mod apply;
pub mod check;
pub mod hosts_file;
pub mod journal;
pub(crate) mod payloads;
mod render;
mod step;

pub use apply::{apply, ApplyError, ApplyReport};
pub use check::{check, Status};
pub use payloads::{is_url, ImageFile, PayloadError, Payloads, Unpack};
pub use step::{Action, Contents, Phase, Probe, ServiceAction, Step};

use serde::Serialize;

/// An ordered list of steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// Appends a step.
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}
