//! The journal: what `up` has done, step by step, in `/var/lib/bootstrap/journal.json`.
//!
//! Written atomically after every change of a step's state, so a crash or kill leaves the
//! last completed step recorded and the next run resumes at the one that did not finish.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::host::{Host, HostError};
use crate::state;

/// The state of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryStatus {
    /// Begun, not known to have finished (the run died in it).
    Started,
    /// Finished, or found already in place.
    Done,
    /// Failed; `error` says why.
    Failed,
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub status: EntryStatus,
    /// The step's fingerprint when recorded; a changed step is not considered done.
    pub fingerprint: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    /// What `reset` must take away again, when this step created something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Undo>,
}

/// Something a step created on the host, recorded so `reset` can remove exactly that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Undo {
    /// A file or symlink that was not there before; `dirs_from` is the highest folder
    /// created along with it (removed again when empty).
    File {
        path: std::path::PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dirs_from: Option<std::path::PathBuf>,
    },
    /// A folder that was not there before (and the highest one created with it).
    Dir {
        path: std::path::PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dirs_from: Option<std::path::PathBuf>,
    },
    /// bootstrap's line in `/etc/hosts`.
    HostsEntry,
    /// A unit bootstrap enabled.
    Unit { name: String },
}

/// All step records, in the order steps were first seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub entries: Vec<Entry>,
}

impl Journal {
    /// Reads the journal; a missing one is empty, an unreadable one is set aside with a
    /// warning (every step is then re-checked against the host).
    pub fn load(host: &dyn Host) -> Result<Journal, HostError> {
        let path = Path::new(state::JOURNAL_FILE);
        let Some(bytes) = host.read(path)? else {
            return Ok(Journal::default());
        };
        match serde_json::from_slice(&bytes) {
            Ok(journal) => Ok(journal),
            Err(e) => {
                log::warn!(
                    "{}: unreadable ({e}); starting a new journal, steps are re-checked",
                    state::JOURNAL_FILE
                );
                Ok(Journal::default())
            }
        }
    }

    /// Writes the journal atomically (0600).
    pub fn save(&self, host: &dyn Host) -> Result<(), HostError> {
        state::write_json(host, state::JOURNAL_FILE, self)
    }

    /// The record for a step.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// Whether the step is recorded done with this fingerprint.
    pub fn is_done(&self, id: &str, fingerprint: &str) -> bool {
        self.get(id)
            .is_some_and(|e| e.status == EntryStatus::Done && e.fingerprint == fingerprint)
    }

    /// Records a step's new state.
    pub fn record(
        &mut self,
        id: &str,
        fingerprint: &str,
        status: EntryStatus,
        note: Option<String>,
    ) {
        let at = state::now_rfc3339();
        match self.entries.iter_mut().find(|e| e.id == id) {
            Some(entry) => {
                if status == EntryStatus::Started {
                    entry.attempts += 1;
                }
                entry.status = status;
                entry.fingerprint = fingerprint.to_owned();
                entry.at = at;
                entry.note = note;
            }
            None => self.entries.push(Entry {
                id: id.to_owned(),
                status,
                fingerprint: fingerprint.to_owned(),
                at,
                note,
                attempts: u32::from(status == EntryStatus::Started),
                undo: None,
            }),
        }
    }

    /// Notes what a step created; the first record wins (a later run that rewrites a file
    /// bootstrap created must not make it look pre-existing).
    pub fn set_undo(&mut self, id: &str, undo: Undo) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.id == id) {
            if entry.undo.is_none() {
                entry.undo = Some(undo);
            }
        }
    }

    /// Everything recorded as created, newest first.
    pub fn undo_list(&self) -> Vec<Undo> {
        self.entries
            .iter()
            .rev()
            .filter_map(|e| e.undo.clone())
            .collect()
    }

    /// The first failed or unfinished step, if any.
    pub fn unfinished(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.status != EntryStatus::Done)
    }
}
